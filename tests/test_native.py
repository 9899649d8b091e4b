"""The native CPU kernel of the Threefry stream (zotune.core.native): the torch kernels' numbers, bit for bit."""

from __future__ import annotations

import ctypes
import subprocess
import warnings

import pytest
import torch

from zotune.core import native, samplers
from zotune.core.samplers import THREEFRY_BLOCK, Direction, ThreefrySampler, make_sampler
from zotune.core.threefry import split_key

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no native kernel here: {native.unavailable_reason()}")

NAMES = ["gaussian", "uniform", "rademacher", "gaussian-13", "uniform-13", "rademacher-13"]


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16 if x.element_size() == 2 else torch.int32)


def start_values(numel: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_native_kernel_gives_the_eager_kernels_bits(name: str, dtype: torch.dtype) -> None:
    """Every size class of its loop: one element, an odd last element, partial and whole vectors of 32 counters,
    and a tensor of three blocks of the layout, the last one short and odd; three passes as in a step."""
    native_sampler = make_sampler(name, backend="native")
    eager = make_sampler(name, backend="eager")
    sizes = (1, 2, 3, 31, 32, 33, 64, 65, 1001, 70_001)
    if name in ("gaussian", "uniform-13"):
        sizes += (2 * THREEFRY_BLOCK + 65,)
    for numel in sizes:
        x = start_values(numel, dtype)
        y = x.clone()
        for step, (alpha, decay) in enumerate([(1e-3, 1.0), (-2e-3, 1.0), (1e-3 - 1.5e-7, 0.9999)]):
            direction = Direction(11, numel, step, 5)
            native_sampler.add_(x, direction, alpha, decay)
            eager.add_(y, direction, alpha, decay)
        assert torch.equal(bits(x), bits(y)), f"{name} {dtype} {numel}: {int((x != y).sum())} elements differ"


def test_auto_uses_the_native_kernel_on_cpu_and_the_torch_kernel_elsewhere(monkeypatch) -> None:
    calls: list[torch.dtype] = []
    real = native.add_

    def counting(flat, *args):  # type: ignore[no-untyped-def]
        calls.append(flat.dtype)
        real(flat, *args)

    monkeypatch.setattr(native, "add_", counting)
    auto, eager = make_sampler("gaussian"), make_sampler("gaussian", backend="eager")
    weight = start_values(60, torch.float32).view(6, 10).t()  # not contiguous: apply_ works on a copy
    expected = weight.clone()
    auto.apply_(weight, Direction(1, 2, 0, 4), 0.01)
    eager.apply_(expected, Direction(1, 2, 0, 4), 0.01)
    assert calls == [torch.float32]
    assert torch.equal(weight, expected)
    double = start_values(100, torch.float64)  # not a dtype the native kernel takes: the torch kernel, same numbers
    expected = double.clone()
    auto.add_(double, Direction(1, 2, 0, 5), 0.01)
    eager.add_(expected, Direction(1, 2, 0, 5), 0.01)
    assert calls == [torch.float32]
    assert torch.equal(double, expected)


def test_backend_native_refuses_what_it_cannot_take() -> None:
    sampler = make_sampler("uniform", backend="native")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        sampler.add_(torch.zeros(8, dtype=torch.float16), Direction(0, 0, 0, 0), 1.0)
    with pytest.raises(ValueError, match="backend must be"):
        ThreefrySampler("uniform", backend="fast")
    with pytest.raises(ValueError, match="contiguous CPU"):
        native.add_(torch.zeros(8, 2)[:, 0], "uniform", 20, (0, 0), 1.0, 1.0)


def test_a_native_kernel_that_disagrees_is_refused(monkeypatch) -> None:
    """As for the compiled kernels: auto warns once and keeps the torch kernel's numbers; native raises."""
    monkeypatch.setattr(samplers, "_native_checked", {})
    monkeypatch.setattr(samplers, "_native_warned", set())
    real = native.add_

    def wrong(flat, kind, rounds, key, alpha, decay):  # type: ignore[no-untyped-def]
        real(flat, kind, rounds, key, alpha, decay)
        flat[:1] += 1.0  # the first element is off

    monkeypatch.setattr(native, "add_", wrong)
    x = torch.zeros(100)
    with pytest.warns(RuntimeWarning, match="gives other bits"):
        make_sampler("gaussian").add_(x, Direction(2, 0, 0, 0), 1.0)
    expected = make_sampler("gaussian", backend="eager").sample(100, Direction(2, 0, 0, 0))
    assert torch.equal(x, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        make_sampler("gaussian").add_(torch.zeros(10), Direction(2, 0, 0, 0), 1.0)
    with pytest.raises(RuntimeError, match="gives other bits"):
        make_sampler("gaussian", backend="native").add_(torch.zeros(10), Direction(2, 0, 0, 0), 1.0)


def test_the_library_is_built_once_into_the_cache_and_never_half_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path))
    library = native._build()
    built = sorted((tmp_path / "native").iterdir())
    # one library per flag variant tried (one with gcc; a clang whose OpenMP build links but can't load tries
    # more), and no partial file left behind
    assert built and all(path.suffix == ".so" for path in built)
    assert library.zotune_native_abi() == native.ABI
    stamps = [path.stat().st_mtime_ns for path in built]
    compiles: list[list[str]] = []
    real_run = subprocess.run

    def watching(command, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "--version" not in command:
            compiles.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", watching)
    native._build()
    assert compiles == [] and sorted((tmp_path / "native").iterdir()) == built
    assert [path.stat().st_mtime_ns for path in built] == stamps


def test_without_a_compiler_the_reason_is_given_and_the_sampler_keeps_its_numbers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(OSError, match="no C compiler"):
        native._build()
    monkeypatch.setenv("ZOTUNE_NATIVE", "0")
    with pytest.raises(OSError, match="ZOTUNE_NATIVE=0"):
        native._build()
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_reason", None)
    assert not native.available() and native.unavailable_reason() == "ZOTUNE_NATIVE=0"
    x = torch.zeros(77)
    make_sampler("uniform").add_(x, Direction(4, 1, 0, 0), 1.0)
    assert torch.equal(x, make_sampler("uniform", backend="eager").sample(77, Direction(4, 1, 0, 0)))
    with pytest.raises(RuntimeError, match="unavailable: ZOTUNE_NATIVE=0"):
        make_sampler("uniform", backend="native").add_(x, Direction(4, 1, 0, 0), 1.0)


def test_a_training_step_is_the_same_with_and_without_the_native_kernel(monkeypatch) -> None:
    from zotune.core.optimizer import ZOOptimizer

    def train(use_native: bool) -> tuple[list[float], torch.Tensor]:
        if not use_native:
            monkeypatch.setattr(native, "available", lambda: False)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 1))
        inputs, targets = torch.randn(64, 40), torch.randn(64, 1)
        optimizer = ZOOptimizer(model.parameters(), lr=1e-2, weight_decay=0.1, seed=5)
        losses = [float(optimizer.step(lambda: torch.nn.functional.mse_loss(model(inputs), targets)))
                  for _ in range(5)]
        monkeypatch.undo()
        return losses, torch.cat([p.detach().flatten() for p in model.parameters()])

    losses_native, weights_native = train(True)
    losses_torch, weights_torch = train(False)
    assert losses_native == losses_torch
    assert torch.equal(weights_native, weights_torch)
    assert losses_native[-1] < losses_native[0]


def test_key_words_are_taken_modulo_two_to_the_32() -> None:
    """split_key gives signed int32 words; the kernel takes their unsigned bits."""
    direction = Direction(2**40 + 3, 9, 1, 2)
    x, y = torch.zeros(64), torch.zeros(64)
    k0, k1 = split_key(direction.key)
    native.add_(x, "uniform", 20, (k0, k1), 1.0, 1.0)
    native.add_(y, "uniform", 20, (k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF), 1.0, 1.0)
    assert torch.equal(x, y)
    assert torch.equal(x, make_sampler("uniform", backend="eager").sample(64, direction))


def test_a_build_that_links_but_cannot_load_falls_back_to_the_next_flags(tmp_path, monkeypatch) -> None:
    """zig cc (clang 22) links an -fopenmp build without the OpenMP runtime, so loading it fails on an undefined
    __kmpc symbol: the build must go on to the variant without OpenMP, not give the kernel up."""
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path))
    real_load = ctypes.CDLL
    tried: list[str] = []

    def first_fails(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append(str(name))
        if len(tried) == 1:
            raise OSError(f"{name}: undefined symbol: __kmpc_global_thread_num")
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(native.ctypes, "CDLL", first_fails)
    library = native._build()
    assert len(tried) >= 2 and tried[-1] != tried[0]  # zig cc: its second variant (OpenMP) fails to load too
    assert library.zotune_native_abi() == native.ABI


def test_a_build_without_openmp_runs_on_one_thread_with_the_same_bits(tmp_path, monkeypatch) -> None:
    """What Apple's clang (no OpenMP) builds: the one-thread kernel, which says so, and gives the same numbers."""
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_FLAG_VARIANTS", (["-march=native"], []))
    one_thread = native._build()
    assert one_thread.zotune_native_openmp() == 0
    monkeypatch.setattr(native, "_library", one_thread)
    monkeypatch.setattr(native, "_reason", None)
    monkeypatch.setattr(native, "_functions", {})
    assert native.available() and not native.threaded()
    x = start_values(70_001, torch.float32)
    y = x.clone()
    direction = Direction(3, 70_001, 0, 2)
    make_sampler("gaussian", backend="native").add_(x, direction, 1e-3)
    make_sampler("gaussian", backend="eager").add_(y, direction, 1e-3)
    assert torch.equal(bits(x), bits(y))
