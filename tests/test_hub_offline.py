"""Hub tasks without network: one ValueError line naming the task and the ways around it, no chained traceback.

Without network ``datasets.load_dataset`` raises the built-in ``ConnectionError`` ("Couldn't reach
'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)", chained to the hub client's error), and the same with
``HF_HUB_OFFLINE=1`` ("... (OfflineModeIsEnabled)"). The tests patch ``load_dataset`` to raise it, and one
runs the real ``datasets`` code path in a subprocess with ``HF_HUB_OFFLINE=1`` and an empty cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

datasets = pytest.importorskip("datasets")

from zotune.cli import main  # noqa: E402
from zotune.llm.tasks import get_task, sample_splits  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def _no_network(path: str, *args: Any, **kwargs: Any) -> NoReturn:
    """What ``datasets.load_dataset`` raises when the hub cannot be reached (observed with datasets 5.2)."""
    try:
        raise FileNotFoundError(f"Dataset {path} is not cached in None")
    except FileNotFoundError as exc:
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)") from exc


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", _no_network)


def _assert_offline_message(message: str, task: str) -> None:
    assert f"task {task!r}" in message
    assert "Hugging Face hub, which could not be reached" in message
    assert "--data-dir" in message and "train.jsonl" in message and "validation.jsonl" in message
    assert "offline task" in message and "zotune tasks" in message and "mr" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["sst2", "rte", "squad"])
def test_no_network_is_one_valueerror_without_chain(offline: None, name: str) -> None:
    with pytest.raises(ValueError) as info:
        sample_splits(get_task(name), 4, 2, 2)
    _assert_offline_message(str(info.value), name)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_other_errors_are_not_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set the hub does not have is not a network error: its own exception and message come through."""
    not_found = datasets.exceptions.DatasetNotFoundError("Dataset 'nyu-mll/glue' doesn't exist on the Hub")

    def missing(*args: Any, **kwargs: Any) -> NoReturn:
        raise not_found

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(datasets.exceptions.DatasetNotFoundError) as info:
        sample_splits(get_task("sst2"), 4, 2, 2)
    assert info.value is not_found


def test_data_dir_needs_no_hub(offline: None) -> None:
    splits = sample_splits(get_task("sst2"), 2, 1, 1, local_dir=FIXTURES / "sst2")
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (2, 1, 1)


def test_real_datasets_with_hub_offline(tmp_path: Path) -> None:
    """The real ``load_dataset`` with HF_HUB_OFFLINE=1 and an empty cache raises what the loader catches."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    code = (
        "from zotune.llm.tasks import get_task, sample_splits\n"
        "try:\n"
        "    sample_splits(get_task('sst2'), 4, 2, 2)\n"
        "except ValueError as exc:\n"
        "    assert exc.__cause__ is None and exc.__suppress_context__, 'chained'\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _assert_offline_message(proc.stdout.strip(), "sst2")


def test_cli_train_fails_in_one_line_before_making_the_run_folder(
    offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--task", "sst2", "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("zotune train: error: ")
    _assert_offline_message(lines[0], "sst2")
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
