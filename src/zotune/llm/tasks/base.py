"""Task registry: a task turns raw data rows into prompts with candidates (or answers) and names its metric.

MeZO's split of concerns is kept: a *template* (``Task.build``) formats one raw row; the data
(``Task.load_pools``) comes from the hub, from a package archive or from a user's file; the data
protocol (``sample_splits``) is shared by all tasks.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Example", "Task", "Splits", "register_task", "get_task", "available_tasks", "sample_splits",
    "KINDS", "TaskDataError",
]

KINDS = ("classification", "multiple_choice", "generation")
Row = Mapping[str, Any]


class TaskDataError(ValueError):
    """Raised for data that does not fit a task: a malformed file line, a label not among the candidates."""


@dataclass(frozen=True)
class Example:
    """One formatted example.

    ``prompt`` is the context; each candidate is the continuation appended to it (with its leading
    space, if any). ``gold`` holds the indices of the correct candidates (ReCoRD may have several).
    Generation examples have no candidates; ``answers`` are the accepted answers and the first one
    is the teacher-forcing target.
    """

    prompt: str
    candidates: tuple[str, ...] = ()
    gold: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        """The continuation trained with the LM loss: the gold candidate, or the first answer + newline."""
        if self.candidates:
            return self.candidates[self.gold[0]]
        return " " + self.answers[0] + "\n"


@dataclass(frozen=True)
class Task:
    """A named task.

    ``load_pools(local_dir)`` returns raw rows in two pools, ``"train"`` (train and dev are sampled
    from it) and ``"test"`` (the held-out evaluation data: the hub's validation split, or a fixed
    part of a data set that has no split). ``local_dir`` points at ``train.jsonl`` /
    ``validation.jsonl`` files in the hub schema, used in tests and by users without hub access.
    """

    name: str
    kind: str
    description: str
    build: Callable[[Row], Example]
    load_pools: Callable[[Path | None], dict[str, list[Row]]]
    metric: str = "accuracy"
    default_objective: str = "ce"
    source: str = ""
    default_num_dev: int = 500
    label_words: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in ("accuracy", "f1"):
            raise ValueError(f"metric must be accuracy or f1, got {self.metric!r}")

    def examples(self, rows: list[Row]) -> list[Example]:
        return [self.build(row) for row in rows]


_REGISTRY: dict[str, Task] = {}
_FACTORIES: dict[str, Callable[..., Task]] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry; a duplicate name is an error."""
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def available_tasks() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """Look a task up by name (case-insensitive); unknown names raise ``ValueError`` listing the known ones."""
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for task in _REGISTRY.values():
        if key in task.aliases:
            return task
    raise ValueError(
        f"unknown task {name!r}; known tasks: {', '.join(available_tasks())} "
        "(or a custom task from a JSONL/CSV file: --data FILE --template ... --label-words ...)"
    )


@dataclass(frozen=True)
class Splits:
    """The examples of one run: train and dev sampled from the train pool, test from the test pool."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]


def sample_splits(task: Task, num_train: int, num_dev: int | None, num_eval: int, seed: int = 0,
                  local_dir: Path | None = None, pools: dict[str, list[Row]] | None = None) -> Splits:
    """MeZO's data protocol.

    Train and dev come from one seeded permutation of the train pool (the first ``num_train +
    num_dev`` rows; the last ``num_dev`` of those are dev). Test is ``num_eval`` rows sampled from
    the test pool with the same seed. When the pool is too small, dev keeps its size and train
    shrinks (MeZO's behaviour for CB and COPA), with a warning.
    """
    if num_train < 0 or num_eval < 0 or (num_dev is not None and num_dev < 0):
        raise ValueError("num_train, num_dev and num_eval must be >= 0")
    num_dev = task.default_num_dev if num_dev is None else num_dev
    pools = pools if pools is not None else task.load_pools(local_dir)
    train_pool, test_pool = pools["train"], pools["test"]
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(train_pool))
    need = num_train + num_dev
    if need > len(train_pool):
        # dev keeps its size while it is at most half the pool (MeZO: CB trains on 150, devs on 100)
        if num_train > 0:
            num_dev = min(num_dev, len(train_pool) // 2)
        num_dev = min(num_dev, len(train_pool))
        warnings.warn(
            f"task {task.name}: num_train + num_dev = {need} > {len(train_pool)} rows available; "
            f"using dev={num_dev} and the other {len(train_pool) - num_dev} for training",
            stacklevel=2,
        )
        need = len(train_pool)
    chosen = order[:need]
    train_idx, dev_idx = chosen[: need - num_dev], chosen[need - num_dev:]
    test_rng = np.random.RandomState(seed)
    test_idx = test_rng.permutation(len(test_pool))[: min(num_eval, len(test_pool))]
    return Splits(
        train=task.examples([train_pool[i] for i in train_idx]),
        dev=task.examples([train_pool[i] for i in dev_idx]),
        test=task.examples([test_pool[i] for i in test_idx]),
    )


def fixed_split(rows: list[Row], test_fraction: float = 0.2, seed: int = 1234) -> dict[str, list[Row]]:
    """Split a data set without predefined splits into train/test pools, the same way on every machine.

    The seed is fixed (not the run's seed) so that the held-out test rows never change between runs.
    """
    order = np.random.RandomState(seed).permutation(len(rows))
    n_test = int(round(len(rows) * test_fraction))
    return {"train": [rows[i] for i in order[n_test:]], "test": [rows[i] for i in order[:n_test]]}


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskDataError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
    return rows


# What ``datasets.load_dataset`` raises when the hub cannot be reached: it wraps a failed connection, a
# timeout and HF_HUB_OFFLINE=1 alike in the built-in ConnectionError ("Couldn't reach 'nyu-mll/glue' on the
# Hub (LocalEntryNotFoundError)"). Anything else (a dataset or config that does not exist, a gated data set)
# is not a network error and keeps its own message.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def _offline_tasks() -> list[str]:
    """The registered tasks that need no hub access."""
    return [name for name in available_tasks() if not _REGISTRY[name].source.startswith("hub")]


def hub_unreachable(task: str, dataset: str, exc: BaseException) -> ValueError:
    """The one-line error for a hub task without hub access: what failed and the ways around it."""
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the message holds
    return ValueError(
        f"task {task!r} downloads {dataset} from the Hugging Face hub, which could not be reached ({reason}); "
        f"use --data-dir DIR (a folder with train.jsonl and validation.jsonl in the hub schema) "
        f"or an offline task ({', '.join(_offline_tasks())}; see zotune tasks)"
    )


def hub_loader(path: str, config: str | None = None, train_split: str = "train",
               test_split: str = "validation", *, task: str | None = None,
               ) -> Callable[[Path | None], dict[str, list[Row]]]:
    """Pools from a hub data set via ``datasets.load_dataset``, or from local JSONL files in its schema.

    ``task`` names the task in the error raised when the hub cannot be reached (a ``ValueError`` with no
    chained traceback, which the CLI prints as one line); it defaults to the data set's name.
    """
    dataset = f"{path} {config}" if config else path

    def load(local_dir: Path | None = None) -> dict[str, list[Row]]:
        if local_dir is not None:
            local_dir = Path(local_dir)
            files = {"train": str(local_dir / "train.jsonl"), "test": str(local_dir / "validation.jsonl")}
            for f in files.values():
                if not Path(f).is_file():
                    raise FileNotFoundError(f"missing data file {f}")
            return {split: _read_jsonl(Path(f)) for split, f in files.items()}
        import datasets

        try:
            train = datasets.load_dataset(path, config, split=train_split)
            test = datasets.load_dataset(path, config, split=test_split)
        except NETWORK_ERRORS as exc:
            raise hub_unreachable(task or dataset, dataset, exc) from None
        return {"train": list(train), "test": list(test)}

    return load
