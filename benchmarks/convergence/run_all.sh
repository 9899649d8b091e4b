#!/usr/bin/env bash
# The whole convergence study with two workers (one torch thread each: batch-8 forwards of a 135M
# model use two threads poorly). Each worker takes the next run nobody holds, mr first, then bbc.
# Resumable: stop it at any time and run it again; finished runs are skipped. Logs: $LOGS (/tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOGS=${LOGS:-/tmp}
for worker in 1 2; do
    zotune bench run benchmarks/convergence/mr.toml benchmarks/convergence/bbc.toml \
        > "$LOGS/zotune-convergence-worker$worker.log" 2>&1 &
    sleep 5  # so the two workers do not both compute the first zero-shot evaluation
done
wait
for task in mr bbc; do
    zotune bench report "benchmarks/convergence/$task.toml"
done
