"""The run folder: what a run writes, and the rule that ``--overwrite`` only ever removes that.

A run folder holds a marker file (``zotune-run.json``) and the entries in :data:`RUN_ENTRIES`. A folder is
replaced (``--overwrite``) only when it holds a marker and nothing else than those entries; any other
non-empty folder (``--out .`` in a project) is refused, with or without ``--overwrite``, and then only the
entries a run writes are removed, never the folder itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zotune.llm.data import atomic_write_bytes

__all__ = ["RunFolder", "FolderState", "inspect_folder", "check_out_folder", "default_run_name", "jsonable",
           "MARKER", "RUN_ENTRIES"]

MARKER = "zotune-run.json"
# everything a run writes; a leading "." covers the temporary files and folders of atomic writes
RUN_ENTRIES = frozenset({MARKER, "config.yaml", "metrics.jsonl", "summary.json", "curves.png", "seeds.log",
                         "checkpoint", "checkpoint.old", "checkpoints"})


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks a skipped (non-finite) step
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class FolderState:
    kind: str  # "absent", "empty", "run" (a zotune run, only its own entries) or "other"
    foreign: tuple[str, ...] = ()  # entries a run does not write

    @property
    def is_run(self) -> bool:
        return self.kind == "run"


def inspect_folder(path: str | Path) -> FolderState:
    path = Path(path)
    if not path.exists():
        return FolderState("absent")
    if not path.is_dir():
        return FolderState("other", (path.name,))
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return FolderState("empty")
    foreign = tuple(n for n in names if n not in RUN_ENTRIES and not n.startswith("."))
    if MARKER in names and not foreign:
        return FolderState("run")
    return FolderState("other", foreign or tuple(names))


def _writable_ancestor(path: Path) -> None:
    """Refuse a folder that cannot be created or written, naming the reason."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"--out {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {probe} is not writable")


def check_out_folder(path: str | Path, overwrite: bool) -> FolderState:
    """What a new run may do with ``path``, checked before any work: raise if it is a file, unwritable, a
    zotune run without ``overwrite``, or a non-empty folder that is not a zotune run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    _writable_ancestor(path)
    state = inspect_folder(path)
    if state.kind == "run" and not overwrite:
        raise FileExistsError(
            f"{path} holds a zotune run{_run_status(path)}: continue it with `zotune train --resume {path}`, "
            "start it again with --overwrite, or choose another --out")
    if state.kind == "other":
        shown = ", ".join(state.foreign[:3]) + (", ..." if len(state.foreign) > 3 else "")
        raise FileExistsError(
            f"{path} is not empty and is not a zotune run folder (it holds {shown}); --overwrite only replaces "
            "zotune runs: choose another --out")
    return state


def _run_status(path: Path) -> str:
    try:
        summary = json.loads((path / "summary.json").read_text())
        return f" ({summary.get('status')} at step {summary.get('steps_done', summary.get('steps'))})"
    except (OSError, ValueError):
        return ""


class RunFolder:
    """One training run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"

    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> "RunFolder":
        """A new run folder at ``path``; an old run there is removed only with ``overwrite``, entry by entry."""
        path = Path(path)
        state = check_out_folder(path, overwrite)
        if state.is_run:
            for entry in path.iterdir():  # only what a run wrote (check_out_folder made sure)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.write_json(MARKER, {"format": "zotune-run", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return folder

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """An existing run folder (for ``--resume``, ``zotune replay``, ``zotune eval``)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"run folder not found: {path}")
        if not (path / MARKER).is_file():
            raise ValueError(f"{path} is not a zotune run folder (no {MARKER})")
        return cls(path)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        target = self.path / name
        atomic_write_bytes(target, (json.dumps(jsonable(payload), indent=2) + "\n").encode())
        return target

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.path / name).read_text())

    def write_config(self, config: dict[str, Any]) -> Path:
        import yaml

        target = self.path / "config.yaml"
        atomic_write_bytes(target, yaml.safe_dump(jsonable(config), sort_keys=False).encode())
        return target

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line; a line is written whole with a single write call."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(jsonable(record)) + "\n")

    def metrics_size(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Back to a checkpoint's length: the lines after it are written again by the resumed run."""
        if self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as handle:
                handle.truncate(size)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def default_run_name(task: str, model: str, peft: str) -> str:
    clean = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in s).strip("-")  # noqa: E731
    return f"runs/{clean(task)}-{clean(Path(model).name)}-{peft}-{time.strftime('%Y%m%d-%H%M%S')}"
