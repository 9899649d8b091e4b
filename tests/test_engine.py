"""The engine's interfaces: per-component options, configs that guard checkpoints, per-tensor radii and
weights, stateful transforms, replay's refusal, generic runner inputs, and the samplers' known answers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import zotune
from problems import MLPRegression, Quadratic
from zotune.core.estimators import TwoPointEstimator
from zotune.core.samplers import Direction, make_sampler
from zotune.core.transforms import TensorUpdate, Transform
from zotune.methods import Component, Parts, Setup, compose


def _component(name: str, options: set[str], **parts: Any) -> Component:
    def build(setup: Setup, **kw: Any) -> Parts:
        built = Parts(**parts)
        built.transforms = tuple(t(**kw) for t in parts.get("transforms", ()))  # type: ignore[misc,operator]
        return built

    return Component(name, build, frozenset(options))


class _Scale(Transform):
    """A gradient-stage transform for the tests: update *= factor."""

    stage = "gradient"

    def __init__(self, factor: float = 1.0, name: str = "scale") -> None:
        self.factor, self.name = factor, name

    def config(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def update(self, ctx, item, update: TensorUpdate) -> TensorUpdate:  # type: ignore[no-untyped-def]
        return update.scaled(self.factor)


# --- options per component ----------------------------------------------------------------------------


def test_nested_and_flat_options_build_the_same_optimizer() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    nested = zotune.build_optimizer("kerzoo+pezo", [w], kerzoo={"clip_norm": 7.0}, pezo={"bits": 8})
    flat = zotune.build_optimizer("kerzoo+pezo", [w], clip_norm=7.0, bits=8)
    assert nested.config() == flat.config()
    assert nested.config()["sampler"]["bits"] == 8
    assert {"type": "zotune.algorithms.kerzoo.TensorNormClip", "max_norm": 7.0} in nested.config()["transforms"]
    underscored = zotune.build_optimizer("kerzoo-unbiased", [w], kerzoo_unbiased={"kernel_order": 5})
    assert underscored.estimator.kernel_order == 5


def test_an_option_two_components_take_must_be_nested() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    a = _component("a", {"factor"}, transforms=(lambda **kw: _Scale(name="a", **kw),))
    b = _component("b", {"factor"}, transforms=(lambda **kw: _Scale(name="b", **kw),))
    with pytest.raises(ValueError, match="option 'factor' is taken by"):
        compose([w], [a, b], factor=2.0)
    optimizer = compose([w], [a, b], a={"factor": 2.0}, b={"factor": 3.0})
    factors = [t.factor for t in optimizer.transforms if isinstance(t, _Scale)]
    assert factors == [2.0, 3.0]


def test_unknown_options_are_refused_with_the_known_ones() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="unknown option"):
        zotune.build_optimizer("kerzoo", [w], kernel_order=3)  # an option of kerzoo-unbiased, not kerzoo
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bits'\] for 'kerzoo'"):
        zotune.build_optimizer("kerzoo+pezo", [w], kerzoo={"bits": 8})
    with pytest.raises(ValueError, match="must be a mapping"):
        zotune.build_optimizer("kerzoo", [w], kerzoo=3)


def test_chain_order_gradient_stage_then_lr_then_update_stage() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    optimizer = zotune.build_optimizer("kerzoo+momentum+dizo", [w], projected="all", window=0)
    names = [t.name for t in optimizer.transforms]
    assert names == ["clip", "momentum", "lr", "weight_decay", "averaging", "dizo"]


# --- configs guard checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "saved, loaded, where",
    [
        (dict(method="kerzoo"), dict(method="kerzoo", clip_norm=1.0), "max_norm"),
        (dict(method="pezo"), dict(method="pezo", bits=8), "sampler.bits"),
        (dict(method="mezo"), dict(method="kerzoo-unbiased"), "estimator.type"),
        (dict(method="momentum"), dict(method="momentum", window=3), "window"),
        (dict(method="mezo"), dict(method="mezo", n_queries=2), "estimator.n_queries"),
    ],
)
def test_loading_into_an_optimizer_built_differently_is_refused(saved: dict, loaded: dict, where: str) -> None:
    problem = MLPRegression()
    first = zotune.build_optimizer(saved.pop("method"), problem.model.named_parameters(), lr=1e-3, **saved)
    first.step(problem.loss)
    second = zotune.build_optimizer(loaded.pop("method"), problem.model.named_parameters(), lr=1e-3, **loaded)
    before = copy.deepcopy(second.state_dict())
    with pytest.raises(ValueError, match=rf"built differently: .*{where}"):
        second.load_state_dict(first.state_dict())
    assert second.step_count == 0 and before["zo"] == second.state_dict()["zo"]  # nothing was loaded


def test_transform_buffers_travel_in_the_torch_state_dict() -> None:
    problem = MLPRegression()
    optimizer = zotune.kerzoo(problem.model.named_parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.step(problem.loss)
    state = optimizer.state_dict()
    offsets = [s["averaging.offset"] for s in state["state"].values()]
    assert len(offsets) == 4 and any(o.abs().sum() > 0 for o in offsets)


# --- per-tensor radii and weights ------------------------------------------------------------------------


class _PerTensor(TwoPointEstimator):
    """Tensor l probes at radius eps * r_l and is weighted by w_l (fixed numbers, to check the plumbing)."""

    per_tensor = True

    def tensor_factors(self, base_seed: int, step: int, query: int, param_id: int) -> tuple[float, float]:
        return (0.5, 3.0) if param_id == 0 else (2.0, -1.0)


def test_per_tensor_radius_and_weight_reach_the_probes_and_the_update() -> None:
    a = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        seen.append((a.detach().clone(), b.detach().clone()))
        return (a * torch.arange(6)).sum() + (b**2).sum()

    optimizer = zotune.ZOOptimizer([a, b], lr=0.1, estimator=_PerTensor(eps=1e-2))
    optimizer.step(closure)
    za = optimizer.sampler.sample(6, optimizer.direction(0, 0, 0)).double()
    zb = optimizer.sampler.sample(5, optimizer.direction(0, 1, 0)).double()
    torch.testing.assert_close(seen[0][0], 1e-2 * 0.5 * za, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(seen[0][1], 1e-2 * 2.0 * zb, rtol=1e-5, atol=1e-9)
    c = optimizer.last_record.coefficients[0]
    torch.testing.assert_close(a.detach(), -0.1 * c * 3.0 * za, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(b.detach(), -0.1 * c * -1.0 * zb, rtol=1e-5, atol=1e-9)


# --- stateful transforms, add_param_group, runner inputs, replay ------------------------------------------


def test_add_param_group_trains_the_new_tensors() -> None:
    problem = MLPRegression()
    first, second = list(problem.model.named_parameters())[:2], list(problem.model.named_parameters())[2:]
    optimizer = zotune.mezo(first, lr=1e-2)
    optimizer.add_param_group({"params": [p for _, p in second], "param_names": [n for n, _ in second], "lr": 1e-2})
    before = [p.detach().clone() for _, p in second]
    optimizer.step(problem.loss)
    assert all(not torch.equal(p.detach(), q) for (_, p), q in zip(second, before, strict=True))
    assert len(optimizer.trainable()) == 4


def test_components_receive_the_runners_inputs() -> None:
    received: list[Setup] = []

    def build(setup: Setup) -> Parts:
        received.append(setup)
        return Parts()

    w = torch.nn.Parameter(torch.zeros(3))
    fresh = lambda step, index: (lambda: torch.tensor(0.0))  # noqa: E731
    compose([w], [Component("probe", build, frozenset())], total_steps=77, fresh_closure=fresh, n_queries=2)
    assert received[0].total_steps == 77 and received[0].fresh_closure is fresh and received[0].n_queries == 2


def test_replay_refuses_a_run_it_cannot_reproduce() -> None:
    problem = MLPRegression()
    optimizer = zotune.dizo(problem.model.named_parameters(), projected="all", lr=1e-3, interval=2, record_trajectory=True)
    for _ in range(3):
        optimizer.step(problem.loss)
    base = MLPRegression()
    target = zotune.dizo(base.model.named_parameters(), projected="all", lr=1e-3, interval=2)
    before = [p.detach().clone() for p in base.model.parameters()]
    with pytest.raises(ValueError, match="cannot replay this run: DiZOProjection"):
        zotune.replay(target, optimizer.trajectory)
    assert all(torch.equal(p, q) for p, q in zip(base.model.parameters(), before, strict=True))


def test_a_dropped_step_leaves_stateful_transforms_untouched() -> None:
    problem = Quadratic()
    optimizer = zotune.kerzoo([problem.w], lr=1e-3)
    for _ in range(3):
        optimizer.step(problem.loss)
    weights = problem.w.detach().clone()
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.step(lambda: problem.loss() * float("nan"))
    torch.testing.assert_close(problem.w.detach(), weights, rtol=0, atol=1e-7)  # y -> x moved back
    after = optimizer.state_dict()
    torch.testing.assert_close(after["state"], state["state"], rtol=0, atol=0)


# --- known answers: an accidental change to a random stream fails here ------------------------------------

DIRECTION = Direction(1234, 56, 1, 789, 2, 5, 100, 1000)
KNOWN = {
    "gaussian": [0.293357, -1.535094, 0.140556, -0.385758, 0.027355, 0.163482, 0.820851, -0.491603],
    "uniform": [1.584914, -0.679902, 0.716943, 1.117644, -1.680788, -0.058494, -0.959524, 0.499205],
    "rademacher": [-1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0],
    "gaussian-splitmix": [-0.171755, -0.929961, 1.140109, -0.139556, 1.087223, 1.094282, -1.089313, -1.231597],
    "uniform-splitmix": [-0.821437, 0.454054, 1.333334, -0.750628, -1.140842, -1.505466, 0.605198, -0.367298],
    "rademacher-splitmix": [1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0],
    "gaussian-torch": [-0.615804, -1.95111, -0.334981, 0.128304, 0.373779, 0.456148, 0.428968, 0.325542],
    "pezo-block": [-0.694551, -0.642745, 0.746662, -1.359377, 1.721878, -1.419658, 1.694644, -1.001102],
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_answer_vectors(name: str) -> None:
    sampler = make_sampler(name)
    expected = torch.tensor(KNOWN[name])
    torch.testing.assert_close(sampler.sample(8, DIRECTION), expected, rtol=0, atol=1e-6)
    flat = torch.zeros(8)  # the in-place pass (compiled where available) regenerates the same numbers
    sampler.add_(flat, DIRECTION, 1.0)
    torch.testing.assert_close(flat, expected, rtol=0, atol=1e-5)


def test_a_dropped_step_does_not_decay_and_float64_losses_keep_their_precision() -> None:
    """A non-finite loss changes nothing, weight decay included; a float64 closure's difference quotient is
    taken in float64 (a loss difference below float32's resolution still moves the weights)."""
    w = torch.nn.Parameter(torch.full((64,), 3.0))
    optimizer = zotune.mezo([w], lr=1e-2, eps=1e-3, weight_decay=0.5)
    before = w.detach().clone()
    optimizer.step(lambda: torch.tensor(float("nan")))
    torch.testing.assert_close(w.detach(), before, rtol=0, atol=1e-6)
    assert optimizer.nonfinite_steps == 1

    big = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    offset = 1e8  # float32 spacing at 1e8 is 8: the loss differences below are lost in float32
    optimizer = zotune.mezo([big], lr=1.0, eps=1e-3, seed=3)
    optimizer.step(lambda: offset + big.sum())
    g = optimizer.last_record.coefficients[0]
    assert g != 0.0 and optimizer.last_step_losses[0] - offset != 0.0
