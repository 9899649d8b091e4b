"""Experiment files under ``benchmarks/``: read them, run them, append their results.

An experiment is a TOML (or JSON/YAML) file with a ``kind`` ("cost", "convergence" or "scale"), the path of its
results file (``results``, relative to the experiment file; default: ``results/<file stem>.jsonl``) and the
fields of that kind's config (:class:`zotune.bench.cost.CostConfig`,
:class:`zotune.bench.convergence.ConvergenceConfig`, :class:`zotune.bench.scale.ScaleConfig`). Results are JSON lines, appended, never rewritten:
a convergence study appends one line per finished run and skips the runs already there, so it can be
stopped and resumed at any point; a cost experiment appends one line per run of the whole experiment.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any

from zotune.train.config import load_config_file

__all__ = ["Experiment", "load_experiment", "append_result", "read_results", "KINDS"]

KINDS = ("cost", "convergence", "scale")


@dataclasses.dataclass
class Experiment:
    path: Path
    kind: str
    results: Path
    config: Any  # CostConfig | ConvergenceConfig

    @property
    def name(self) -> str:
        return self.path.stem


def _config_class(kind: str) -> type:
    if kind == "cost":
        from zotune.bench.cost import CostConfig

        return CostConfig
    if kind == "convergence":
        from zotune.bench.convergence import ConvergenceConfig

        return ConvergenceConfig
    if kind == "scale":
        from zotune.bench.scale import ScaleConfig

        return ScaleConfig
    raise ValueError(f"unknown experiment kind {kind!r}; use one of {', '.join(KINDS)}")


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file (unknown keys are errors, naming the known ones)."""
    path = Path(path)
    raw = load_config_file(path)
    kind = raw.pop("kind", None)
    if kind is None:
        raise ValueError(f"{path}: missing 'kind' (one of {', '.join(KINDS)})")
    results = raw.pop("results", None)
    cls = _config_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)} for kind {kind!r}; known: {', '.join(sorted(known))}")
    try:
        config = cls(**raw)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    results_path = path.parent / (results or f"results/{path.stem}.jsonl")
    return Experiment(path=path, kind=kind, results=results_path, config=config)


def append_result(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a lock keeps two runners of the same file from interleaving their lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: Path) -> list[dict[str, Any]]:
    """All records of a results file (none if it does not exist yet); a torn last line is an error."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc}); remove it and run again") from None
    return records
