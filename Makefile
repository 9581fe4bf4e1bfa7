# inferno: one build for everything, out of tree.
#
#   make            release build: binaries in build/bin/
#   make test       deps check, sanitized build (ASan+UBSan) in build/san/,
#                   unit tests, the GGUF fuzzer (FUZZ_SECONDS), Python oracle tests
#   make run        build and start the server (see README)
#   make deps       install system packages and the Python virtualenv
#   make format     clang-format every C source in place
#
# Each component directory builds into a static library; tools and services
# link the libraries they need.

VERSION      := 0.1.0
BUILD        ?= build
SAN          ?= 0
CC           ?= cc
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30

ifeq ($(SAN),1)
  OPTFLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDSAN    := -fsanitize=address,undefined
else
  OPTFLAGS := -O2 -g
  LDSAN    :=
endif

CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-missing-field-initializers \
            -fPIC -MMD -MP $(OPTFLAGS) -DINFERNO_VERSION='"$(VERSION)"' -I. -Icommon -Itokenizer-svc $(EXTRA_CFLAGS)
LDFLAGS  := $(LDSAN) $(EXTRA_LDFLAGS)
LDLIBS   := -lm -lpthread

OBJ := $(BUILD)/obj
BIN := $(BUILD)/bin
LIB := $(BUILD)/lib
TST := $(BUILD)/tests

# ---- libraries ----
COMMON_SRC := $(wildcard common/*.c)
COMMON_LIB := $(LIB)/libcommon.a

TOKENIZER_SRC := $(filter-out tokenizer-svc/main.c,$(wildcard tokenizer-svc/*.c))
TOKENIZER_LIB := $(LIB)/libtokenizer.a

# ---- programs ----
TOOLS := $(BIN)/gguf-inspect $(BIN)/make-test-model $(BIN)/tokenizer-demo

# ---- tests ----
UNIT_TESTS   := $(patsubst tests/unit/%.c,$(TST)/%,$(wildcard tests/unit/test_*.c))
TEST_HELPERS := $(patsubst tests/helpers/%.c,$(TST)/%,$(wildcard tests/helpers/*.c))

.PHONY: all tools tests test deps run format fuzz clean
all: tools
tools: $(TOOLS)
tests: $(TOOLS) $(UNIT_TESTS) $(TEST_HELPERS)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(COMMON_LIB): $(COMMON_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/gguf-inspect: $(OBJ)/tools/gguf-inspect.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -ljansson $(LDLIBS) -o $@

$(TOKENIZER_LIB): $(TOKENIZER_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/tokenizer-demo: $(OBJ)/tools/tokenizer-demo.o $(TOKENIZER_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(BIN)/make-test-model: $(OBJ)/tools/make-test-model.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -ljansson $(LDLIBS) -o $@

$(TST)/test_%: $(OBJ)/tests/unit/test_%.o $(TOKENIZER_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lcmocka -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(TST)/%: $(OBJ)/tests/helpers/%.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# libFuzzer target: always clang, always sanitized, its own output folder.
FUZZ_BIN := build/fuzz/fuzz_gguf
$(FUZZ_BIN): tests/fuzz/fuzz_gguf.c common/gguf.c common/tensor_types.c common/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -Icommon -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=all tests/fuzz/fuzz_gguf.c common/gguf.c common/tensor_types.c -lm -o $@
fuzz: $(FUZZ_BIN)

deps:
	scripts/install-deps.sh

test:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh
	$(MAKE) --no-print-directory BUILD=build/san SAN=1 tests
	$(MAKE) --no-print-directory fuzz
	scripts/run-tests.sh build/san $(FUZZ_SECONDS)

run:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh
	$(MAKE) --no-print-directory all
	scripts/run.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
