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
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zotune.llm.data import atomic_write_bytes

__all__ = ["RunFolder", "FolderState", "inspect_folder", "check_out_folder", "default_run_name", "jsonable",
           "check_tensorboard", "MARKER", "RUN_ENTRIES", "TENSORBOARD_DIR"]

MARKER = "zotune-run.json"
TENSORBOARD_DIR = "tensorboard"  # --tensorboard: the metrics as TensorBoard event files
# everything a run writes; a leading "." covers the temporary files and folders of atomic writes
RUN_ENTRIES = frozenset({MARKER, "config.yaml", "metrics.jsonl", "summary.json", "curves.png", "seeds.log",
                         "checkpoint", "checkpoint.old", "checkpoints", TENSORBOARD_DIR})
# the name tensorboard gives an event file: events.out.tfevents.<seconds since the epoch>.<host>.<pid>.<n>
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


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


def check_tensorboard() -> None:
    """Raise a one-line ValueError if ``torch.utils.tensorboard`` cannot be imported (the ``tensorboard``
    package is missing or too old): ``--tensorboard`` is checked before the model loads."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--tensorboard needs the tensorboard package ({' '.join(str(exc).split())}): "
                         "pip install 'zotune[tensorboard]'") from None


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers (all but ``step``) as TensorBoard scalars, read as metrics.jsonl holds them:
    a non-finite value (``null`` there) is NaN, a flag (``nonfinite``) 1.0; strings and lists are left out."""
    out = {}
    for key, value in jsonable(record).items():
        if key == "step":
            continue
        if value is None:
            out[key] = math.nan
        elif isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out


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
        self._tensorboard: Any = None  # a torch.utils.tensorboard.SummaryWriter while --tensorboard is on

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
        """Append one JSON line; a line is written whole with a single write call. With TensorBoard on
        (:meth:`start_tensorboard`), the record's numbers also become scalars at its step."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(jsonable(record)) + "\n")
        self._add_scalars(record)

    def start_tensorboard(self, resume_step: int | None = None) -> None:
        """From now on, write every record :meth:`log` appends also as TensorBoard scalars (tag: the record's
        key) into ``tensorboard/``, in an event file of its own.

        ``resume_step``: a resumed run's checkpoint step, after :meth:`truncate_metrics`. The new event file
        starts with ``purge_step=resume_step``, which makes TensorBoard drop every point at that step or later
        from the earlier files (a stopped run may have written some after its checkpoint); the records that
        metrics.jsonl still holds from that step on are then written again, so TensorBoard shows exactly what
        metrics.jsonl holds: no point twice, none lost. TensorBoard reads a folder's event files in the order
        of their names, which start with the second they were opened: the new file waits for a second later
        than the newest one there, so it is read last.
        """
        from torch.utils.tensorboard import SummaryWriter

        if self._tensorboard is not None:
            raise RuntimeError(f"TensorBoard logging of {self.path} is already on")
        folder = self.path / TENSORBOARD_DIR
        if resume_step is not None and folder.is_dir():
            newest = max((int(m.group(1)) for m in map(_EVENT_FILE.match, os.listdir(folder)) if m), default=-1)
            deadline = time.monotonic() + 2.0  # a file from a clock far ahead is not waited for
            while int(time.time()) <= newest and time.monotonic() < deadline:
                time.sleep(0.05)
        self._tensorboard = SummaryWriter(log_dir=str(folder), purge_step=resume_step)
        if resume_step is not None:
            for record in self.read_metrics():
                if record.get("step", -1) >= resume_step:
                    self._add_scalars(record)
            self._tensorboard.flush()

    def _add_scalars(self, record: dict[str, Any]) -> None:
        if self._tensorboard is None or not isinstance(record.get("step"), int):
            return
        for tag, value in _scalars(record).items():
            self._tensorboard.add_scalar(tag, value, global_step=record["step"])

    def flush(self) -> None:
        """Put the TensorBoard points written so far on disk (a checkpoint calls it before it counts the
        logs' lengths, so a run killed later loses none of the points before its checkpoint)."""
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard event file, if one is open; :meth:`log` then writes metrics.jsonl only."""
        if self._tensorboard is not None:
            writer, self._tensorboard = self._tensorboard, None
            writer.close()

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
