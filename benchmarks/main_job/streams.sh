#!/usr/bin/env bash
# Is the main job as accurate with the Threefry stream (the default) as with the old SplitMix64 one
# (`gaussian-splitmix`)? The main job's command, three seeds each, one run at a time on a quiet machine:
#
#     bash benchmarks/main_job/streams.sh TAG [SEED...]     # TAG names the machine, e.g. avx512-zen4.2026-12-04
#     python benchmarks/main_job/streams.py TAG             # the table, from the summaries
#
# Writes results/streams.TAG/{threefry,splitmix}-seed<N>.{summary.json,metrics.jsonl,log} (each run's own files).
# Threefry at seed 0 is the main job itself: main-job.packed.TAG.log / summary.packed.TAG.json, when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:?usage: streams.sh TAG [SEED...]}
shift
seeds=${*:-0 1 2}
out=benchmarks/main_job/results/streams.$tag
mkdir -p "$out"
work=$(mktemp -d /tmp/zotune-streams-XXXXXX)
printf 'method_options:\n  sampler: gaussian-splitmix\n' > "$work/splitmix.yaml"
for seed in $seeds; do
  for stream in threefry splitmix; do
    if [ "$stream" = threefry ] && [ "$seed" = 0 ] && [ -f "benchmarks/main_job/results/summary.packed.$tag.json" ]; then
      continue  # the main job itself
    fi
    [ -f "$out/$stream-seed$seed.summary.json" ] && continue  # done before: resumable
    extra=()
    [ "$stream" = splitmix ] && extra=(--config "$work/splitmix.yaml")
    echo "$(date -u '+%H:%M:%S') $stream seed $seed"
    .venv/bin/zotune train --seed "$seed" --out "$work/$stream-$seed" --no-progress "${extra[@]}" \
      > "$out/$stream-seed$seed.log" 2>&1
    cp "$work/$stream-$seed/summary.json" "$out/$stream-seed$seed.summary.json"
    cp "$work/$stream-$seed/metrics.jsonl" "$out/$stream-seed$seed.metrics.jsonl"
  done
done
rm -rf "$work"
