"""DiZO's projection: geometry, clipping, exact probes, independence from MeZO's randomness, the set S on
tiny OPT / Llama / Gemma / Qwen / LoRA models, and a toy problem where the search must shorten a layer.

The generic optimizer tests (convergence, state_dict, dtypes, ...) run through ``optim_matrix.CASES``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import zotune
from zotune.algorithms.dizo import (
    DiZOProjection,
    displacement_norm,
    dizo_transform,
    interpolate_,
)
from zotune.algorithms.layer_selection import find_attention_blocks, select_projection_targets

# --- tiny models ------------------------------------------------------------------------------------


def _tiny(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    if kind == "opt":
        config = transformers.OPTConfig(ffn_dim=32, max_position_embeddings=32, word_embed_proj_dim=16, **common)
        return transformers.OPTForCausalLM(config)
    if kind == "llama":
        config = transformers.LlamaConfig(intermediate_size=32, num_key_value_heads=1, **common)
        return transformers.LlamaForCausalLM(config)
    if kind == "gemma":
        config = transformers.Gemma3TextConfig(intermediate_size=32, num_key_value_heads=1, head_dim=8, **common)
        return transformers.Gemma3ForCausalLM(config)
    if kind == "qwen":
        config = transformers.Qwen2Config(intermediate_size=32, num_key_value_heads=1, **common)
        return transformers.Qwen2ForCausalLM(config)
    raise ValueError(kind)


def _attention_weights(model: nn.Module, roles: tuple[str, ...]) -> set[str]:
    """The expected S, written out independently: the named projections' weight in every decoder layer."""
    child = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
    names = {n for n, _ in model.named_parameters()}
    prefix = "model.decoder.layers" if any(n.startswith("model.decoder.") for n in names) else "model.layers"
    return {f"{prefix}.{i}.self_attn.{child[r]}.weight" for i in range(2) for r in roles}


@pytest.mark.parametrize("kind", ["opt", "llama", "gemma", "qwen"])
def test_projection_set_by_structure(kind: str) -> None:
    model = _tiny(kind)
    kv = {n for n, _ in select_projection_targets(model, "kv")}
    qv = {n for n, _ in select_projection_targets(model, "qv")}
    assert kv == _attention_weights(model, ("key", "value"))
    assert qv == _attention_weights(model, ("query", "value"))
    # the optimizer resolves the same set from the (name, tensor) pairs alone, by default
    optimizer = zotune.dizo(model.named_parameters(), lr=1e-3)
    assert set(dizo_transform(optimizer).projected_names) == kv
    # and from a model-made target list, even when the optimizer got bare tensors
    optimizer = zotune.dizo(model.parameters(), lr=1e-3, projected=select_projection_targets(model, "qv"))
    assert len(dizo_transform(optimizer).layers) == 4
    anchor = dizo_transform(optimizer).anchor_bytes
    assert anchor == sum(p.numel() * p.element_size() for _, p in select_projection_targets(model, "qv"))


def test_projection_set_lora() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_tiny("llama"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = zotune.dizo(trainable, lr=1e-4, eps=1e-2)
    names = dizo_transform(optimizer).projected_names
    assert len(names) == 8  # lora_A and lora_B of q and v, in 2 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert set(names) == {n for n, _ in trainable}
    # base weights wrapped by PEFT are still found as attention projections (frozen: not projected)
    kv = {n for n, _ in select_projection_targets(model, "kv")}
    prefix = "base_model.model.model.layers"
    assert kv == {f"{prefix}.{i}.self_attn.k_proj.weight" for i in range(2)} | {
        f"{prefix}.{i}.self_attn.v_proj.base_layer.weight" for i in range(2)  # v_proj is wrapped by the adapter
    }
    assert select_projection_targets(model, "auto") == select_projection_targets(model, "lora")


def test_projection_set_errors() -> None:
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="needs parameter names"):
        zotune.dizo([w])
    mlp = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="no attention block"):
        zotune.dizo(mlp.named_parameters())
    fused = nn.Module()
    fused.attn = nn.Module()
    fused.attn.c_attn = nn.Linear(4, 12)
    fused.attn.c_proj = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="fused"):
        select_projection_targets(fused, "kv")
    with pytest.raises(ValueError, match="no LoRA"):
        select_projection_targets(mlp, "lora")
    with pytest.raises(ValueError, match="not among"):
        zotune.dizo(mlp.named_parameters(), projected=["nope.weight"])
    # a stray child called "k" outside an attention block is not taken for a key projection
    assert find_attention_blocks(["enc.k.weight", "enc.mlp.weight"]) == {}
    # a regular expression selects by name; a frozen tensor is never projected
    mlp[0].bias.requires_grad_(False)
    optimizer = zotune.dizo(mlp.named_parameters(), projected=r"^0\.")
    assert dizo_transform(optimizer).projected_names == ["0.weight"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("interval", 0, "interval must be"),
        ("search_iters", 1.5, "search_iters must be"),
        ("eps_projection", 0.0, "eps_projection must be"),
        ("lr_projection", -1.0, "lr_projection must be"),
        ("clip_range", 1.0, "clip_range must be"),
        ("clip_range", float("nan"), "clip_range must be"),
        ("search_closure", 3, "search_closure must be"),
        ("projected", "(", "regular expression"),
    ],
)
def test_bad_options_raise(option: str, value: object, message: str) -> None:
    mlp = nn.Sequential(nn.Linear(2, 1))
    with pytest.raises(ValueError, match=message):
        zotune.dizo(mlp.named_parameters(), **{option: value})


# --- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_interpolate_keeps_direction_and_sets_norm(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(37, 11, generator=g).to(dtype)
    theta = (anchor.double() + 0.1 * torch.randn(37, 11, generator=g, dtype=torch.float64)).to(dtype)
    d = displacement_norm(theta, anchor)
    assert d == pytest.approx(float((theta.double() - anchor.double()).norm()), rel=1e-12)
    for ratio in (0.8, 1.0, 1.2):
        out = theta.clone()
        interpolate_(out, anchor, theta, ratio)
        delta, new = (theta.double() - anchor.double()).flatten(), (out.double() - anchor.double()).flatten()
        tol = 1e-12 if dtype in (torch.float32, torch.float64) else 2e-2  # one rounding to the weights' dtype
        assert new.norm() == pytest.approx(ratio * d, rel=tol if dtype == torch.float64 else max(tol, 1e-6))
        cosine = float(new @ delta / (new.norm() * delta.norm()))
        assert cosine == pytest.approx(1.0, abs=1e-12 if dtype == torch.float64 else 1e-3)
        if ratio == 1.0:
            assert torch.equal(out, theta)  # ratio 1 reproduces the weights bit for bit


def test_interpolate_does_not_touch_its_inputs() -> None:
    anchor = torch.randn(10, dtype=torch.float64)
    theta = anchor + 1.0
    keep_anchor, keep_theta = anchor.clone(), theta.clone()
    out = torch.empty_like(theta)
    interpolate_(out, anchor, theta, 0.5)
    assert torch.equal(anchor, keep_anchor) and torch.equal(theta, keep_theta)
    torch.testing.assert_close(out, anchor + 0.5)


def _two_layer_problem(dtype: torch.dtype = torch.float32, loss_scale: float = 100.0):
    """Loss c sum_l ||W_l - W*_l||^2 with W*_l = theta0_l + Delta*_l (||Delta*_l|| ~ 0.8); ``move`` puts the
    weights at theta0 + s_l Delta*_l. Along gamma_l the loss has curvature 2c."""
    g = torch.Generator().manual_seed(7)
    model = nn.ParameterDict(
        {
            "a": nn.Parameter(torch.randn(8, 8, generator=g).to(dtype)),
            "b": nn.Parameter(torch.randn(8, 8, generator=g).to(dtype)),
        }
    )
    anchor = {k: v.detach().clone() for k, v in model.items()}
    step = {k: torch.randn(8, 8, generator=g).to(dtype) * 0.1 for k in model}
    target = {k: (anchor[k].double() + step[k].double()) for k in model}

    def move(scales: dict[str, float]) -> None:
        with torch.no_grad():
            for k, p in model.items():
                p.copy_((anchor[k].double() + scales[k] * step[k].double()).to(dtype))

    def loss() -> torch.Tensor:
        return sum(((p.double() - target[k]) ** 2).sum() for k, p in model.items()) * loss_scale

    return model, anchor, move, loss


def test_cycle_keeps_direction_clips_ratio_and_counts_passes() -> None:
    model, anchor, move, loss = _two_layer_problem()
    # lr = 0: MeZO's step restores the weights exactly, so the only change is the projection
    optimizer = zotune.dizo(model.named_parameters(), lr=0.0, projected="all", interval=3, search_iters=4, lr_projection=50.0, clip_range=0.1)
    transform = dizo_transform(optimizer)
    move({"a": 1.5, "b": 1.0})
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        return loss()

    before = {k: p.detach().clone() for k, p in model.items()}
    for _ in range(3):
        optimizer.step(closure)
    assert transform.cycles == 1
    assert calls == optimizer.forward_passes == 3 * 2 + 2 * 4
    assert transform.search_forward_passes == 8
    for name, p in model.items():
        old = (before[name].double() - anchor[name].double()).flatten()
        new = (p.detach().double() - anchor[name].double()).flatten()
        ratio = transform.last_ratios[name]
        assert 0.9 - 1e-12 <= ratio <= 1.1 + 1e-12  # the clip holds
        assert float(new.norm() / old.norm()) == pytest.approx(ratio, rel=1e-5)  # the norm is set
        assert float(new @ old / (new.norm() * old.norm())) == pytest.approx(1.0, abs=1e-6)  # the direction is kept
    # a step size this large drives layer a (too long) onto the lower clip bound
    assert transform.last_ratios["a"] == pytest.approx(0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_probes_leave_weights_exactly(dtype: torch.dtype) -> None:
    model, anchor, move, loss = _two_layer_problem(dtype)
    optimizer = zotune.dizo(model.named_parameters(), lr=0.0, projected="all", search_iters=5)
    transform = dizo_transform(optimizer)
    move({"a": 1.3, "b": 0.7})
    before = {k: p.detach().clone() for k, p in model.items()}
    seen: list[dict[str, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        seen.append({k: p.detach().clone() for k, p in model.items()})
        return loss()

    ratios = transform.search(optimizer, closure)
    for name, p in model.items():
        assert torch.equal(p.detach(), before[name])  # bit for bit
    assert len(seen) == 10 and set(ratios) == {"a", "b"}
    # every probe was theta0 + rho Delta: parallel to the displacement, with a relative size in [1-2tau, 1+2tau]
    for probe in seen:
        for name in model:
            old = (before[name].double() - anchor[name].double()).flatten()
            new = (probe[name].double() - anchor[name].double()).flatten()
            assert float(new @ old / (new.norm() * old.norm())) == pytest.approx(1.0, abs=1e-2)
            assert 0.6 - 1e-2 <= float(new.norm() / old.norm()) <= 1.4 + 1e-2
    # and the probes moved the weights (the test would notice a search that never probes)
    assert any(not torch.equal(probe["a"], before["a"]) for probe in seen)


def test_toy_problem_search_shortens_the_long_layer_and_lowers_loss() -> None:
    # layer a's displacement is 1.5 times its best length, b's is right; curvature along gamma is 2, so
    # eta_p = 0.2 is a stable step (the official 2.0 is scaled for LLM losses)
    model, _, move, loss = _two_layer_problem(loss_scale=1.0)
    optimizer = zotune.dizo(model.named_parameters(), lr=0.0, projected="all", interval=1, search_iters=20, lr_projection=0.2)
    transform = dizo_transform(optimizer)
    move({"a": 1.5, "b": 1.0})
    start = loss().item()
    optimizer.step(loss)  # lr = 0: only the projection changes the weights
    # the best ratio for a, 1/1.5, lies past the bound 1 - tau = 0.8: the search ends on the bound
    assert transform.last_ratios["a"] == pytest.approx(0.8)
    assert loss().item() < 0.5 * start
    for _ in range(5):  # the next cycles reach a's best length (b only carries SPSA noise, and recovers)
        optimizer.step(loss)
    assert loss().item() < 0.01 * start


def test_nonfinite_probe_is_skipped() -> None:
    model, _, move, loss = _two_layer_problem()
    optimizer = zotune.dizo(model.named_parameters(), lr=0.0, projected="all", search_iters=3)
    transform = dizo_transform(optimizer)
    move({"a": 1.2, "b": 1.0})
    before = {k: p.detach().clone() for k, p in model.items()}
    ratios = transform.search(optimizer, lambda: loss() * float("nan"))
    assert transform.skipped_iterations == 3
    assert ratios == {"a": 1.0, "b": 1.0}
    assert all(torch.equal(p.detach(), before[k]) for k, p in model.items())


# --- independence from MeZO's randomness and data -----------------------------------------------------


def _directions(method: str, steps: int) -> list[torch.Tensor]:
    """The direction z of each step, read off the first probe: (theta + eps z) - theta, in float64."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    eps = 1e-3
    kwargs = dict(projected="all", interval=2, search_iters=3) if method == "dizo" else {}
    optimizer = zotune.build_optimizer(method, lin.named_parameters(), lr=1e-2, eps=eps, seed=4, **kwargs)
    found: list[torch.Tensor] = []
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        if calls == 0:
            current = torch.cat([p.detach().flatten() for p in lin.parameters()])
            found.append((current - start) / eps)
        calls += 1
        return (lin(x) ** 2).mean()

    for _ in range(steps):
        start = torch.cat([p.detach().flatten() for p in lin.parameters()])
        calls = 0
        optimizer.step(closure)
    if method == "dizo":
        assert dizo_transform(optimizer).cycles == steps // 2  # the projection did run in between
    return found


def test_mezo_directions_unchanged_with_dizo_on() -> None:
    plain, with_dizo = _directions("mezo", 7), _directions("dizo", 7)
    for z_plain, z_dizo in zip(plain, with_dizo, strict=True):
        torch.testing.assert_close(z_plain, z_dizo, rtol=0, atol=1e-6)
    assert not torch.allclose(plain[0], plain[1])  # and the directions do change from step to step


def test_search_uses_its_own_batches_and_rng() -> None:
    model, _, move, loss = _two_layer_problem()
    asked: list[tuple[int, int]] = []
    step_calls = 0

    def search_closure(step: int, j: int):
        asked.append((step, j))
        return loss

    def step_closure() -> torch.Tensor:
        nonlocal step_calls
        step_calls += 1
        return loss()

    optimizer = zotune.dizo(
        model.named_parameters(), lr=1e-3, projected="all", interval=2, search_iters=3, search_closure=search_closure
    )
    move({"a": 1.2, "b": 1.0})
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    for _ in range(4):
        optimizer.step(step_closure)
    assert torch.equal(rng, torch.get_rng_state())  # no global RNG
    assert step_calls == 8  # the training closure (its batch, its data order) is used only by MeZO's probes
    assert asked == [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)]
    assert optimizer.forward_passes == 8 + 2 * 2 * 3  # 2 per step, 2 J per cycle


def test_fresh_batch_indices_are_a_pure_function() -> None:
    from zotune.train.loop import fresh_batch_indices as search_batch_indices

    a = search_batch_indices(100, 16, seed=1, step=50, iteration=3)
    assert a == search_batch_indices(100, 16, seed=1, step=50, iteration=3)
    assert len(set(a)) == 16 and all(0 <= i < 100 for i in a)
    assert a != search_batch_indices(100, 16, seed=1, step=50, iteration=4)
    assert a != search_batch_indices(100, 16, seed=2, step=50, iteration=3)
    assert len(search_batch_indices(5, 16, seed=0, step=0, iteration=0)) == 5


# --- resume, composition, memory ----------------------------------------------------------------------


def test_resume_across_cycles_is_exact() -> None:
    model, _, move, loss = _two_layer_problem()
    move({"a": 1.4, "b": 0.9})
    other = copy.deepcopy(model)

    def other_loss() -> torch.Tensor:
        return sum(((p.double() - q.double()) ** 2).sum() for p, q in zip(other.values(), target_params, strict=True))

    target_params = [p.detach().clone() + 0.05 for p in model.values()]

    def model_loss() -> torch.Tensor:
        return sum(((p.double() - q.double()) ** 2).sum() for p, q in zip(model.values(), target_params, strict=True))

    options = dict(lr=1e-2, projected="all", interval=3, search_iters=2, seed=9)
    reference = zotune.dizo(model.named_parameters(), **options)
    for _ in range(10):
        reference.step(model_loss)
    first = zotune.dizo(other.named_parameters(), **options)
    for _ in range(5):
        first.step(other_loss)
    state = copy.deepcopy(first.state_dict())
    # a fresh optimizer built on the half-trained weights: its anchor comes from the checkpoint
    second = zotune.dizo(other.named_parameters(), **dict(options, seed=0))
    second.load_state_dict(state)
    for _ in range(5):
        second.step(other_loss)
    for p, q in zip(model.values(), other.values(), strict=True):
        assert torch.equal(p, q)
    assert dizo_transform(second).cycles == dizo_transform(reference).cycles == 3
    assert second.forward_passes == reference.forward_passes == 20 + 3 * 4


def test_anchor_on_cpu_option_and_bytes() -> None:
    model, _, move, loss = _two_layer_problem()
    optimizer = zotune.dizo(model.named_parameters(), lr=0.0, projected="all", anchor_device="cpu")
    transform = dizo_transform(optimizer)
    assert all(layer.anchor.device.type == "cpu" for layer in transform.layers)
    assert transform.anchor_bytes == 2 * 64 * 4
    assert transform.metrics()["dizo_anchor_bytes"] == 2 * 64 * 4


def test_composes_with_other_components() -> None:
    model, _, move, loss = _two_layer_problem()
    others = [m for m in zotune.available_methods() if m not in ("mezo", "dizo")]
    for method in ["mezo+dizo", *(f"{m}+dizo" for m in others)]:
        optimizer = zotune.build_optimizer(method, model.named_parameters(), lr=1e-3, projected="all", interval=2, search_iters=2)
        transform = dizo_transform(optimizer)
        move({"a": 1.2, "b": 1.0})
        for _ in range(2):
            optimizer.step(loss)
        assert transform.cycles == 1, method
        assert math.isfinite(loss().item())
    with pytest.raises(ValueError, match="unknown option"):
        zotune.mezo(model.named_parameters(), interval=5)


def test_bind_only_once() -> None:
    transform = DiZOProjection(projected="all")
    w = nn.Parameter(torch.zeros(2))
    zotune.mezo([w], extra_transforms=[transform])
    with pytest.raises(ValueError, match="already bound"):
        zotune.mezo([w], extra_transforms=[transform])
