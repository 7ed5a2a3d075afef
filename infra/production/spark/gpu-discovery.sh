#!/usr/bin/env bash
# Spark resource discovery for NVIDIA GPUs (spark.worker.resource.gpu.discoveryScript):
# prints {"name": "gpu", "addresses": ["0", "1", ...]} with the index of every
# GPU nvidia-smi lists, and exits non-zero with a message on stderr when
# nvidia-smi is missing or fails (the worker then refuses to start, instead
# of starting without its GPUs).
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-discovery: nvidia-smi not found; install the NVIDIA driver or remove spark.worker.resource.gpu.* on this worker" >&2
    exit 1
fi
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader)
addresses=""
for index in $indexes; do
    addresses="${addresses:+$addresses, }\"${index}\""
done
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
