#!/usr/bin/env bash
# All step-cost experiments, one after another (run on a quiet machine: the timings are side by side,
# but a second job on the same cores still adds noise). About 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
for experiment in smollm2-full smollm2-lora gemma3-full; do
    zotune bench run "benchmarks/cost/$experiment.toml"
done
