"""Forward-only fine-tuning with PyTorch Lightning's manual optimisation and zotune.

Lightning's automatic optimisation runs ``backward`` inside the closure it gives the optimizer, so a
zeroth-order optimizer needs manual optimisation (``self.automatic_optimization = False``): the
``training_step`` builds a closure that returns the batch's loss and hands it to
``self.optimizers().step(closure=...)``. Lightning passes the closure on to the zotune optimizer, which
calls it twice per step (at theta + eps z and theta - eps z) under ``torch.no_grad()``; the model is put
in eval mode so both calls see the same function (no dropout). No ``manual_backward``, no ``zero_grad``.

Lightning calls its ``on_before_optimizer_step`` hook after every call of the closure, so twice per ZO
step. Use ``precision="32-true"``, ``"bf16-mixed"`` or ``"bf16-true"``: ``"16-mixed"`` steps through a
GradScaler, which needs gradients.

    pip install lightning
    python examples/lightning_manual.py    # the same 100 steps, the same losses

It trains a tiny Llama built from a config on a synthetic next-token task (the same as
``examples/plain_loop.py``), so it runs offline.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

import zotune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import mean_loss, synthetic_batches, tiny_model  # noqa: E402  (the same model and data)


class ZOModule(pl.LightningModule):
    """A causal LM trained by a zotune method through Lightning's manual optimisation."""

    def __init__(self, model: torch.nn.Module, method: str = "mezo", lr: float = 4e-3, eps: float = 1e-3,
                 seed: int = 0, total_steps: int = 100, **options: Any) -> None:
        super().__init__()
        self.automatic_optimization = False  # zotune steps with a closure of forward passes
        self.model = model
        self.method, self.lr, self.eps, self.seed, self.total_steps = method, lr, eps, seed, total_steps
        self.options = options

    def configure_optimizers(self) -> Any:
        optimizer = zotune.build_optimizer(self.method, self.model.named_parameters(), lr=self.lr, eps=self.eps,
                                           seed=self.seed, **self.options)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(self.total_steps, 1))
        return [optimizer], [scheduler]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.model.eval()  # Lightning sets train mode each epoch: no dropout between the two probes

        def closure() -> torch.Tensor:
            return self.model(**batch).loss  # called under torch.no_grad() by the optimizer

        loss = self.optimizers().step(closure=closure)  # the step's loss: the mean of its probe losses
        self.lr_schedulers().step()
        self.log("train_loss", loss, prog_bar=True)
        return loss


def main(steps: int = 100, lr: float = 4e-3, eps: float = 1e-3, method: str = "mezo", seed: int = 0,
         quiet: bool = False, callbacks: list[pl.Callback] | None = None, **options: Any) -> tuple[float, float]:
    """Train ``steps`` ZO steps with a Lightning Trainer; returns the mean loss before and after."""
    model = tiny_model(seed)
    batches = synthetic_batches()
    before = mean_loss(model, batches)
    module = ZOModule(model, method=method, lr=lr, eps=eps, seed=seed, total_steps=steps, **options)
    # the batches are ready-made: a loader over them that hands each one out as it is
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=not quiet, enable_model_summary=not quiet,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")  # on purpose, see training_step
        trainer.fit(module, train_dataloaders=loader)
    after = mean_loss(model, batches)
    print(f"mean loss {before:.4f} -> {after:.4f}")
    return before, after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--method", default="mezo", help="a zotune method, e.g. mezo, kerzoo, mezo+pezo")
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    main(steps=cli.steps, lr=cli.lr, eps=cli.eps, method=cli.method, seed=cli.seed)
