#!/bin/sh
# Does the native Threefry kernel build with Clang and for other CPUs? A check of the source, not of speed.
#
#     pip install --target /tmp/zigpkg ziglang          # zig cc: a Clang that cross-compiles, from PyPI
#     sh benchmarks/rng/native_builds.sh > benchmarks/rng/results/native_builds.<date>.log
#
# For each target it compiles src/zotune/core/native/threefry.c with zotune's flags (zotune/core/native.py)
# and, for the assembly of each, counts vector square roots and fused multiply-adds (there must be none: they
# would change the last bit). Whether a host build gives the torch kernels' bits is tests/test_native.py's job:
#     CC=<a wrapper that runs zig cc> ZOTUNE_CACHE=/tmp/zigcache python -m pytest tests/test_native.py
set -u
ZIG_PATH=${ZIG_PATH:-/tmp/zigpkg}
PYTHON=${PYTHON:-.venv/bin/python}
SOURCE=src/zotune/core/native/threefry.c
FLAGS="-O3 -ffp-contract=off -fno-math-errno -fPIC -Wno-psabi"
zigcc() { PYTHONPATH=$ZIG_PATH "$PYTHON" -m ziglang cc "$@"; }
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD)$(git diff --quiet -- "$SOURCE" || echo '+changes')"
echo "# $(zigcc --version 2>&1 | head -1)"
for target in "x86_64-linux-gnu -march=x86_64" "x86_64-linux-gnu -march=haswell" "x86_64-linux-gnu -march=znver4" \
              "aarch64-linux-gnu -mcpu=generic" "aarch64-linux-gnu -mcpu=neoverse_v1" "aarch64-macos -mcpu=apple_m1"; do
    set -- $target
    if zigcc $FLAGS -target "$1" "$2" -shared "$SOURCE" -o /tmp/native_build.so 2>/tmp/native_build.err; then
        zigcc $FLAGS -target "$1" "$2" -S "$SOURCE" -o /tmp/native_build.s 2>/dev/null
        case $1 in
            aarch64*) sqrt=$(grep -cE 'fsqrt(\.[248][sd])?	v' /tmp/native_build.s); fma=$(grep -cE '\bf(n)?m(la|ls|add|sub)\b' /tmp/native_build.s) ;;
            *) sqrt=$(grep -cE 'vsqrtps|sqrtps' /tmp/native_build.s); fma=$(grep -cE 'vfn?m(add|sub)' /tmp/native_build.s) ;;
        esac
        echo "$1 $2: builds; vector sqrt instructions $sqrt, fused multiply-adds $fma"
    else
        echo "$1 $2: FAILS: $(grep -m1 error /tmp/native_build.err)"
    fi
done
rm -f /tmp/native_build.so /tmp/native_build.s /tmp/native_build.err
