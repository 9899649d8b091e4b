"""The run folder: resolved config, metrics.jsonl, summary.json, the best checkpoint and a plot.

Every file is written atomically (a temporary file or folder, then a rename), so an interrupted run
never leaves a half-written summary or checkpoint behind; the checkpoint on disk is always the last
complete one.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zotune.llm.data import atomic_replace_dir, atomic_write_bytes

__all__ = ["RunFolder", "save_checkpoint", "load_checkpoint", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_META = "zotune_checkpoint.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks a skipped (non-finite) step
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class RunFolder:
    """One training run's output folder."""

    @staticmethod
    def check_free(path: str | Path, overwrite: bool = False) -> None:
        """Raise ``FileExistsError`` if ``path`` holds files and ``overwrite`` is off (checked before any work)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise FileExistsError(f"run folder {path} already exists and is not empty (use --overwrite or another --out)")

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.check_free(self.path, overwrite)
        if self.path.exists() and any(self.path.iterdir()):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        target = self.path / name
        atomic_write_bytes(target, (json.dumps(_jsonable(payload), indent=2) + "\n").encode())
        return target

    def write_config(self, config: dict[str, Any]) -> Path:
        import yaml

        target = self.path / "config.yaml"
        atomic_write_bytes(target, yaml.safe_dump(_jsonable(config), sort_keys=False).encode())
        return target

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line; a line is written whole with a single write call."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def save_checkpoint(model: nn.Module, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Save the trainable weights: the adapter only for a peft model, else the ``requires_grad``
    tensors as ``model.safetensors`` (frozen embeddings are not copied). Atomic."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(tmp), safe_serialization=True)
            meta = {**meta, "format": "peft"}
        else:
            tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
            save_file(tensors, str(tmp / "model.safetensors"))
            meta = {**meta, "format": "trainable-state"}
        (tmp / _META).write_text(json.dumps(_jsonable(meta), indent=2) + "\n")
        atomic_replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(base_model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply a checkpoint written by ``save_checkpoint`` to a freshly loaded base model."""
    folder = Path(folder)
    meta_path = folder / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a zotune checkpoint (no {_META})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(folder))
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    missing = [k for k in state if k not in dict(base_model.named_parameters())]
    if missing:
        raise ValueError(f"checkpoint {folder} has tensors the model lacks, e.g. {missing[:3]}")
    base_model.load_state_dict(state, strict=False)
    return base_model


def checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / _META).read_text())


def default_run_name(task: str, model: str, peft: str) -> str:
    clean = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-")  # noqa: E731
    return f"runs/{clean(task)}-{clean(Path(model).name)}-{peft}-{time.strftime('%Y%m%d-%H%M%S')}"
