"""The authors' PeZO (zotune.pezo) over whole training steps: equal to MeZO's reference step fed the
authors' generator, restated literally (tests/test_pezo_rng.py holds the generator's own tests)."""

from __future__ import annotations

import copy

import pytest
import torch

import zotune
from problems import MLPRegression
from test_pezo_rng import ReferenceRNGs, reference_on_the_fly_z, reference_pre_generation_z
from zotune.algorithms.pezo_rng import pregeneration_pool, rng_permutations
from zotune.reference import reference_mezo_step

SEED = 5


def _double_mlp() -> MLPRegression:
    problem = MLPRegression()
    problem.model.double()
    problem.x, problem.y = problem.x.double(), problem.y.double()
    return problem


@pytest.mark.parametrize("mode", ["on-the-fly", "pre-generation"])
def test_fifty_steps_equal_mezo_reference_with_the_authors_generator(mode: str) -> None:
    """Their loop caches one z per tensor per step (``random_vector``) and walks the RNG array (or the
    pool's read position) one tensor after the other; MeZO's four passes then reuse that z."""
    fast = _double_mlp()
    slow = copy.deepcopy(fast)
    optimizer = zotune.pezo(fast.model.named_parameters(), lr=1e-2, eps=1e-3, seed=SEED, mode=mode)
    # the tensors in the optimizer's canonical order (ascending id), which the generator's walk follows
    by_id = {id(p): name for name, p in fast.model.named_parameters()}
    order = [by_id[id(item.param)] for item in optimizer.trainable()]
    slow_params = dict(slow.model.named_parameters())
    tensors = [slow_params[name] for name in order]

    perms = rng_permutations(SEED, 31, 12)
    rngs = ReferenceRNGs(12, perms.tolist())
    pool = pregeneration_pool(perms, 31 * 4096)
    state = {"pass": 0, "cache": [], "position": 0}

    def begin_pass() -> None:
        if state["pass"] % 4 == 0:  # a new step: draw every tensor's z once, in order
            cache = []
            for p in tensors:
                if mode == "on-the-fly":
                    cache.append(reference_on_the_fly_z(rngs, p.numel(), step=state["pass"] // 4))
                else:
                    z, state["position"] = reference_pre_generation_z(pool, state["position"], p.numel())
                    cache.append(z)
            state["cache"] = cache
        state["pass"] += 1

    def draw_z(index: int, p: torch.Tensor) -> torch.Tensor:
        return state["cache"][index].to(p.dtype).view_as(p)  # their ``z = z.to(param.dtype)``

    for _ in range(50):
        optimizer.step(fast.loss)
        reference_mezo_step(tensors, slow.loss, draw_z, lr=1e-2, eps=1e-3, begin_pass=begin_pass)
    for name, p in fast.model.named_parameters():
        torch.testing.assert_close(p, slow_params[name], rtol=1e-9, atol=1e-11, msg=name)
    assert fast.loss() < 0.9 * MLPRegression().loss().double()  # it trained


def test_random_numbers_per_step_are_n_per_tensor() -> None:
    problem = MLPRegression()
    optimizer = zotune.pezo(problem.model.named_parameters(), lr=1e-2)
    optimizer.step(problem.loss)
    tensors = len(list(problem.model.parameters()))
    assert optimizer.last_step_random_numbers == 3 * 31 * tensors  # three passes, one 31-vector per tensor
    mezo = zotune.mezo(MLPRegression().model.named_parameters(), lr=1e-2)
    mezo.step(problem.loss)
    assert mezo.last_step_random_numbers == 3 * sum(p.numel() for p in problem.model.parameters())


def test_tiled_directions_keep_each_tensor_in_an_n_dimensional_subspace() -> None:
    """The documented cost of the authors' tiling: z[j] = z[j + n] in every step, so the weights' change
    inside a tensor is n-periodic for the whole run (the block variant has no such limit)."""
    layer = torch.nn.Linear(40, 10, bias=False)
    start = layer.weight.detach().clone()
    optimizer = zotune.pezo([("w", layer.weight)], lr=1e-2, n_rngs=7)
    x = torch.randn(16, 40)
    for _ in range(5):
        optimizer.step(lambda: layer(x).pow(2).mean())
    change = (layer.weight.detach() - start).reshape(-1)
    torch.testing.assert_close(change[7:], change[:-7])
    block = zotune.pezo_block([("w", layer.weight)], lr=1e-2, pool_size=8)
    before = layer.weight.detach().clone()
    block.step(lambda: layer(x).pow(2).mean())
    change = (layer.weight.detach() - before).reshape(-1)
    assert not torch.allclose(change[8:], change[:-8])
