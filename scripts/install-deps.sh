#!/usr/bin/env bash
# Installs what inferno needs on Debian/Ubuntu: the system packages (C
# libraries, compilers, fuzzing) and a Python virtualenv (.venv) with the
# system-test tools. Idempotent: does nothing when everything is present.
#   --check   only report, exit 1 when something is missing
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential clang pkg-config python3 python3-venv
          libnng-dev libprotobuf-c-dev protobuf-c-compiler libcivetweb-dev
          libpcre2-dev libutf8proc-dev libjansson-dev libcmocka-dev curl)
PY_PACKAGES=(pytest openai gguf numpy jinja2 matplotlib)
VENV=.venv

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
venv_ok=1
"$VENV/bin/python" -c 'import pytest, openai, gguf, numpy, jinja2, matplotlib' >/dev/null 2>&1 || venv_ok=0

if [[ "${1:-}" == "--check" ]]; then
    [[ ${#missing[@]} -eq 0 && $venv_ok -eq 1 ]] && exit 0
    echo "missing: ${missing[*]} $([[ $venv_ok -eq 0 ]] && echo python-venv)"
    exit 1
fi

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps: installing ${missing[*]}"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ $venv_ok -eq 0 ]]; then
    echo "install-deps: creating $VENV (${PY_PACKAGES[*]})"
    # Debian's python3 -m venv needs python3-venv; a pyenv python has it built in.
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
fi
echo "install-deps: ok"
