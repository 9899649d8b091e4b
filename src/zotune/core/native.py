"""The native CPU kernel of the Threefry stream: ``native/threefry.c``, built once per machine.

``ThreefrySampler`` (backend ``auto``) draws its CPU passes with this kernel where it builds. It computes the
numbers of the torch kernels (``zotune.core.threefry``) bit for bit, ``p <- decay * p + alpha * z`` in
place for float32 and bfloat16 tensors, but runs 32 counters through Threefry's round chain at once, where
inductor's loop waits on one vector's chain: on an AVX2 CPU (Zen 2) a ``uniform`` pass costs 0.53 instead of
1.69 ns per element, a ``gaussian`` one 1.01 instead of 2.33, and a 1000-element call 18 instead of about
155 us (``benchmarks/rng/native_pass.py``).

Building needs what ``torch.compile`` on the CPU already needs: a C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang`` on ``PATH``). The library is compiled for this CPU (``-march=native``; the cache key holds
the compiler, its flags and the CPU's feature flags, so a shared home directory never hands one CPU's
build to another) and kept in ``$ZOTUNE_CACHE/native``. OpenMP threads follow ``torch.get_num_threads()``.
``ZOTUNE_NATIVE=0`` turns it off. Whatever stops it (no compiler, a failed build, a kernel that disagrees
with the torch kernels on the sampler's first check) leaves the torch kernels in place, with the reason in
:func:`unavailable_reason`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from zotune.cache import cache_dir

__all__ = ["ABI", "DTYPES", "KINDS", "SOURCE", "add_", "available", "built_with", "disable", "library_path",
           "supports", "threaded", "unavailable_reason"]

SOURCE = Path(__file__).with_name("native") / "threefry.c"
ABI = 2  # zotune_native_abi() of the source this module calls
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}
KINDS = ("gaussian", "uniform", "rademacher")
# -ffp-contract=off: no fused multiply-adds, which would change last bits; -fno-math-errno lets sqrt vectorise.
_BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-Wno-psabi"]
# tried in order: the first that builds is kept (Apple's clang has no OpenMP; some compilers spell native -mcpu)
_FLAG_VARIANTS = (["-march=native", "-fopenmp"], ["-mcpu=native", "-fopenmp"], ["-march=native"], ["-mcpu=native"], [])

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernel is unavailable, once known
_built_with: str | None = None  # the compiler, its version and the flags of the loaded build
_functions: dict[tuple[str, int, torch.dtype], ctypes._CFuncPtr] = {}


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for candidate in ("cc", "gcc", "clang"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    """The CPU's feature flags (Linux), or what the platform says: part of the cache key, since -march=native
    builds for exactly this CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path(compiler: str, flags: list[str]) -> Path:
    """Where the build for this source, compiler, flags and CPU lives in the cache."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), _version(compiler).encode(), " ".join(flags).encode(),
                 platform.machine().encode(), _cpu_identity().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / "native" / f"threefry-{key.hexdigest()[:20]}.so"


def _build() -> ctypes.CDLL:
    """Load the cached build, or compile one (a few seconds) and load it; raises OSError with the reason."""
    if os.environ.get("ZOTUNE_NATIVE", "1") == "0":
        raise OSError("ZOTUNE_NATIVE=0")
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler found (set CC, or install cc, gcc or clang)")
    errors = []
    for variant in _FLAG_VARIANTS:
        flags = _BASE_FLAGS + variant
        path = library_path(compiler, flags)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # a private name, then an atomic rename: concurrent builders never see a half-written library
            partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial")
            try:
                result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(partial)], capture_output=True,
                                        text=True, timeout=600, check=False)
                if result.returncode != 0:
                    errors.append(f"{' '.join(variant) or 'plain'}: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        try:
            library = ctypes.CDLL(str(path))
        except OSError as error:
            # a build can link yet not load: a clang whose -fopenmp leaves the OpenMP runtime's symbols undefined
            # (zig cc, found so); the next variant, without OpenMP, may load
            errors.append(f"{' '.join(variant) or 'plain'}: {error}")
            continue
        if library.zotune_native_abi() != ABI:
            raise OSError(f"{path} has ABI {library.zotune_native_abi()}, expected {ABI}")
        global _built_with
        version = _version(compiler).strip().splitlines()
        _built_with = f"{compiler} ({version[0] if version else 'version unknown'}) {' '.join(variant)}".strip()
        return library
    raise OSError(f"{compiler} could not build {SOURCE.name}: {'; '.join(errors)}")


def _load() -> ctypes.CDLL | None:
    global _library, _reason
    with _lock:
        if _library is None and _reason is None:
            try:
                _library = _build()
            except (OSError, subprocess.SubprocessError) as error:
                _reason = str(error)
        return _library


def available() -> bool:
    """Whether the native kernel is built and loaded here (builds it on the first call)."""
    if _library is not None:  # every sampler call asks: no lock once it is loaded
        return True
    return _load() is not None


def threaded() -> bool:
    """Whether the loaded kernel was built with OpenMP, i.e. runs a pass on ``torch.get_num_threads()`` threads
    (False also when it is unavailable). A build without it runs every pass on one thread."""
    return available() and bool(_library is not None and _library.zotune_native_openmp())


def built_with() -> str | None:
    """The compiler (its path and version line) and the flag variant of the last build loaded, for benchmark
    records; None before a build."""
    return _built_with


def unavailable_reason() -> str | None:
    """Why the native kernel is not used, or None while it is (or was not tried yet)."""
    return _reason


def disable(reason: str) -> None:
    """Stop using the native kernel in this process (the sampler's check found it disagreeing)."""
    global _library, _reason
    with _lock:
        _library, _reason = None, reason
        _functions.clear()


def _function(kind: str, rounds: int, dtype: torch.dtype) -> ctypes._CFuncPtr:
    found = _functions.get((kind, rounds, dtype))
    if found is None:
        library = _load()
        if library is None:
            raise RuntimeError(f"the native Threefry kernel is unavailable: {_reason}")
        found = getattr(library, f"zotune_threefry{rounds}_{kind}_{DTYPES[dtype]}")
        found.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_double,
                          ctypes.c_double, ctypes.c_int]
        found.restype = None
        _functions[(kind, rounds, dtype)] = found
    return found


def supports(flat: torch.Tensor) -> bool:
    """Whether the native kernel can take this tensor: a contiguous CPU tensor of float32 or bfloat16."""
    return flat.device.type == "cpu" and flat.dtype in DTYPES and flat.is_contiguous()


def add_(flat: torch.Tensor, kind: str, rounds: int, key: tuple[int, int], alpha: float, decay: float) -> None:
    """``flat <- decay * flat + alpha * z`` for the Threefry stream of ``kind`` (``gaussian``, ``uniform``,
    ``rademacher``) with ``rounds`` rounds under the key words ``key`` (as ``split_key`` gives them), over the
    whole 1-D tensor: the layout of :class:`zotune.core.samplers.ThreefrySampler`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if not supports(flat):
        raise ValueError(f"the native kernel takes contiguous CPU float32 or bfloat16 tensors, got {flat.dtype} "
                         f"on {flat.device} (contiguous: {flat.is_contiguous()})")
    # ctypes releases the GIL for the call; the kernel's OpenMP runtime is torch's (same libgomp soname)
    _function(kind, rounds, flat.dtype)(flat.data_ptr(), flat.numel(), key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF,
                                        float(alpha), float(decay), torch.get_num_threads())
