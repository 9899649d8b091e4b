"""Checkpoints: the best-dev weights (``checkpoint/``) and the resumable state (``checkpoints/``).

``checkpoint/`` holds the trainable weights of the best dev evaluation so far, in a form a fresh base
model loads (``load_checkpoint``; ``zotune eval --checkpoint``): the adapter for PEFT (``save_pretrained``),
else the ``requires_grad`` tensors as ``model.safetensors``. When the zero-shot model is the best, it
holds no tensors (``"format": "base"``: the base model as loaded).

``checkpoints/step-NNNNNNNN/`` holds everything a resumed run needs: the trainable tensors
(``trainable.safetensors``, by their names in the live model), the optimizer's whole ``state_dict``
(``optimizer.pt``: every component's state, KerZOO's averaged copy, momentum buffers) and the runner's
state (``state.json``: step, data position, best-so-far, log lengths). It is written into a temporary
folder, each file flushed with fsync, renamed into place, and only then does ``checkpoints/latest.json``
(itself written to a temporary file, fsynced and renamed) point at it; older step folders are removed
after that. A write that fails (a full disk) therefore leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zotune.train.run_folder import jsonable

__all__ = ["CHECKPOINT_DIR", "RESUME_DIR", "CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_meta",
           "restore_best", "save_resume", "load_resume", "latest_resume", "resume_size"]

CHECKPOINT_DIR = "checkpoint"
RESUME_DIR = "checkpoints"
_META = "zotune_checkpoint.json"
_POINTER = "latest.json"


class CheckpointError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_durable(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(jsonable(payload), indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


# --- the best-dev checkpoint ------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module | None, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Save the trainable weights to ``folder`` atomically (the older folder stays until the new one is
    complete). ``model=None`` records the base model itself (the zero-shot model won)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        if model is None:
            meta = {**meta, "format": "base"}
        elif hasattr(model, "peft_config"):
            model.save_pretrained(str(tmp), safe_serialization=True)
            meta = {**meta, "format": "peft"}
        else:
            save_file(_trainable(model), str(tmp / "model.safetensors"))
            meta = {**meta, "format": "trainable-state"}
        (tmp / _META).write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        for path in tmp.iterdir():
            _fsync_file(path)
        _replace_dir(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {folder}: {exc.strerror or exc}; the previous one is intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete folder into place. Between the two renames only ``<final>.old`` exists; readers
    fall back to it (:func:`_existing`)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _existing(folder: Path) -> Path:
    if not folder.is_dir():
        old = folder.with_name(folder.name + ".old")
        if old.is_dir():
            return old
    return folder


def checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    folder = _existing(Path(folder))
    meta_path = folder / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} is not a zotune checkpoint (no {_META})")
    return json.loads(meta_path.read_text())


def load_checkpoint(base_model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply a checkpoint written by ``save_checkpoint`` to a freshly loaded base model."""
    folder = _existing(Path(folder))
    meta = checkpoint_meta(folder)
    if meta.get("format") == "base":
        return base_model
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


def restore_best(model: nn.Module, folder: str | Path) -> None:
    """Copy the best checkpoint's tensors into the live ``model`` (the one that trained), in place."""
    from safetensors.torch import load_file

    folder = _existing(Path(folder))
    meta = checkpoint_meta(folder)
    if meta.get("format") == "peft":
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        unexpected = getattr(result, "unexpected_keys", None)
        prompt_learning = getattr(model.active_peft_config, "is_prompt_learning", False)
        if unexpected and not prompt_learning:  # a prompt encoder's state is loaded apart and listed here
            raise ValueError(f"checkpoint {folder} does not fit the model: {unexpected[:3]}")
        return
    if meta.get("format") != "trainable-state":
        raise ValueError(f"checkpoint {folder} holds no weights to restore ({meta.get('format')})")
    _copy_into(model, load_file(str(folder / "model.safetensors")), folder)


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], origin: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        diff = sorted(set(params) ^ set(tensors))
        raise ValueError(f"{origin} does not hold this model's trainable tensors (e.g. {diff[:3]})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


# --- the resumable state ----------------------------------------------------------------------------------

def save_resume(run_path: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-<step>/`` and point ``latest.json`` at it; raise :class:`CheckpointError`
    (the previous checkpoint intact) if any write fails."""
    from safetensors.torch import save_file

    root = run_path / RESUME_DIR
    name = f"step-{step:08d}"
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
        save_file(_trainable(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(jsonable({**state, "step": step}), indent=2) + "\n")
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # the same step saved again (a signal right after a periodic checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
        tmp = None
        _fsync_dir(root)
        _write_json_durable(root / _POINTER, {"dir": name, "step": step})
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write the checkpoint at step {step}: {exc.strerror or exc}; the previous checkpoint is intact"
        ) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.iterdir():  # the pointer has moved: older states are no longer needed
        if old.is_dir() and old.name.startswith("step-") and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_resume(run_path: Path) -> Path | None:
    pointer = run_path / RESUME_DIR / _POINTER
    if not pointer.is_file():
        return None
    folder = run_path / RESUME_DIR / json.loads(pointer.read_text())["dir"]
    if not (folder / "state.json").is_file():
        raise ValueError(f"{pointer} points at {folder.name}, which is incomplete")
    return folder


def load_resume(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a resumable checkpoint into ``model`` and ``optimizer``; returns the runner's state."""
    from safetensors.torch import load_file

    _copy_into(model, load_file(str(folder / "trainable.safetensors")), folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))
    return json.loads((folder / "state.json").read_text())


def resume_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
