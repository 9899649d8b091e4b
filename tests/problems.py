"""Small problems with known answers, shared by the optimizer tests."""

from __future__ import annotations

import torch


class Quadratic:
    """f(w) = 1/2 sum_i a_i (w_i - t_i)^2 with a_i in [1, 10]; gradient a * (w - t); minimum 0 at t."""

    def __init__(self, dim: int = 20, dtype: torch.dtype = torch.float32) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.a = torch.linspace(1.0, 10.0, dim, dtype=torch.float64)
        self.t = torch.randn(dim, generator=generator, dtype=torch.float64)
        self.w = torch.nn.Parameter(torch.zeros(dim, dtype=dtype))

    def loss(self) -> torch.Tensor:
        w = self.w.to(torch.float64)
        return 0.5 * (self.a * (w - self.t) ** 2).sum()

    def gradient(self) -> torch.Tensor:
        return self.a * (self.w.detach().to(torch.float64) - self.t)


class MLPRegression:
    """A 4-16-1 tanh MLP fitting a fixed random teacher of the same shape on 64 points."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(99)
        self.x = torch.randn(64, 4, generator=generator)
        teacher = self._mlp(generator)
        with torch.no_grad():
            self.y = teacher(self.x)
        self.model = self._mlp(generator)

    @staticmethod
    def _mlp(generator: torch.Generator) -> torch.nn.Sequential:
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        return model

    def loss(self) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.model(self.x), self.y)


def mean_step_from_a_fixed_point(optimizer: torch.optim.Optimizer, problem: Quadratic, samples: int) -> torch.Tensor:
    """The mean of theta_before - theta_after over ``samples`` steps, each from the same point (the weights
    are put back after every step): with lr = 1 and no other transform, the mean gradient estimate."""
    start = problem.w.detach().clone()
    total = torch.zeros_like(start)
    for _ in range(samples):
        optimizer.step(problem.loss)
        total += start - problem.w.detach()
        with torch.no_grad():
            problem.w.copy_(start)
    return total / samples
