#!/usr/bin/env bash
# make run: the whole cluster in the foreground on the model scripts/get-model.sh
# picks (INFERNO_MODEL, else the real Qwen3-0.6B when it can be downloaded, else
# a random-weight test model), under the supervisor (deploy/inferno run):
# restarts, `deploy/inferno status|scale|logs` from another terminal, Ctrl-C
# stops every process. Settings: deploy/inferno.conf and INFERNO_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(scripts/get-model.sh)
exec deploy/inferno run --model "$model"
