"""`zotune export`: a run's best checkpoint as a Hugging Face folder, on real (tiny) run folders.

Each run trains the tiny llama of ``conftest.py`` for two steps with the model injected (``loaded=``), so after
``train`` returns the injected model holds the run's best weights (the loop restores them in place; for LoRA
the adapter layers sit inside it): that is the reference an export must reproduce. The CLI loads the base
model by the run's ``model`` (the tiny folder's path), as a user's export would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from zotune.cli import main
from zotune.llm.models import load_model
from zotune.train.config import TrainConfig
from zotune.train.export import EXPORT_MARKER
from zotune.train.loop import train

FIX = Path(__file__).parent / "fixtures"
IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 12], [8, 8, 300, 2, 61, 44, 9, 1]])


def _config(tiny_dir: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(model=str(tiny_dir), data=str(FIX / "custom" / "reviews.jsonl"), template="Review: {review}\nIt was",
                label_words="neg=terrible,pos=great", label_field="sentiment", steps=2, eval_every=0, num_train=4,
                num_dev=0, num_eval=2, batch_size=2, lr=5e-2, eps=1e-2, out=str(out), progress=False,
                zero_shot=False, seed=3)
    return TrainConfig.from_flat(**{**base, **kw})


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.fixture(scope="module")
def runs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One run folder per kind of checkpoint, with the logits of the run's best weights and of the base model."""
    root = tmp_path_factory.mktemp("runs")
    base_logits = _logits(load_model(str(tiny_dir)).model)
    made: dict[str, dict[str, Any]] = {}
    for name, kw in {"full": {"peft": "full"}, "lora": {"peft": "lora"}, "prefix": {"peft": "prefix", "lr": 1e-2},
                     # with dev examples the random tiny model's zero-shot dev accuracy ties every trained step and wins
                     "base": {"peft": "lora", "zero_shot": True, "num_dev": 2, "eval_every": 1}}.items():
        loaded = load_model(str(tiny_dir))
        summary = train(_config(tiny_dir, root / name, **kw), loaded=loaded, echo=lambda msg: None)
        made[name] = {"dir": root / name, "summary": summary,
                      "logits": _logits(loaded.model) if name in ("full", "lora") else None}
    made["base_logits"] = {"logits": base_logits}
    return made


def _export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None, str]:
    rc = main(["export", *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if lines else None), captured.err


def test_full_fine_tuning_exports_a_from_pretrained_folder(runs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, out = runs["full"], tmp_path / "full-hf"
    assert (run["dir"] / "checkpoint" / "model.safetensors").is_file()
    rc, result, err = _export(capsys, str(run["dir"]), str(out))
    assert rc == 0, err
    assert result["written"] == "model" and result["peft"] == "full" and result["best_step"] == 2
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(result["files"])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    exported = _logits(model)
    assert torch.equal(exported, run["logits"])  # the run's best weights, bit for bit
    assert not torch.allclose(exported, runs["base_logits"]["logits"], atol=1e-4)  # and not the base model
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("It was great")["input_ids"] and tok.pad_token == "<pad>"
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["run_folder"] == str(run["dir"].resolve()) and marker["best_step"] == run["summary"]["best_step"]
    assert marker["method"] == "mezo" and marker["model"] == run["summary"]["model"] and marker["written"] == "model"
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir() if p.name != EXPORT_MARKER)
    assert not list(tmp_path.glob(".full-hf*"))  # no temporary folder left beside it


def test_lora_merged_and_unmerged(runs, tiny_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = runs["lora"]
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    rc, result, err = _export(capsys, str(run["dir"]), str(merged_dir))
    assert rc == 0, err
    assert result["written"] == "merged-lora" and result["merged"] is True
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    merged_logits = _logits(merged)
    torch.testing.assert_close(merged_logits, run["logits"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged_logits, runs["base_logits"]["logits"], atol=1e-4)  # the adapter did something

    rc, result, err = _export(capsys, str(run["dir"]), str(adapter_dir), "--no-merge-lora")
    assert rc == 0, err
    assert result["written"] == "adapter" and result["merged"] is False
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "model.safetensors").exists()
    readme = (adapter_dir / "README.md").read_text()
    assert str(tiny_dir) in readme and "PeftModel.from_pretrained" in readme
    restored = PeftModel.from_pretrained(load_model(str(tiny_dir)).model, str(adapter_dir))
    assert torch.equal(_logits(restored), run["logits"])


def test_prefix_exports_the_adapter_and_says_so(runs, tiny_dir, tmp_path, capsys):
    from peft import PeftModel

    from zotune.train.checkpoint import load_checkpoint

    run, out = runs["prefix"], tmp_path / "prefix"
    rc, result, err = _export(capsys, str(run["dir"]), str(out))  # --merge-lora is on by default
    assert rc == 0, err
    assert result["written"] == "adapter" and result["peft"] == "prefix"
    notes = [line for line in err.splitlines() if "prefix tuning cannot be merged" in line]
    assert len(notes) == 1
    restored = _logits(PeftModel.from_pretrained(load_model(str(tiny_dir)).model, str(out)))
    reference = _logits(load_checkpoint(load_model(str(tiny_dir)).model, run["dir"] / "checkpoint"))
    assert torch.equal(restored, reference)
    assert not torch.allclose(restored, runs["base_logits"]["logits"], atol=1e-4)


def test_base_checkpoint_exports_the_base_model(runs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run, out = runs["base"], tmp_path / "base"
    assert run["summary"]["best_step"] == 0
    rc, result, err = _export(capsys, str(run["dir"]), str(out))
    assert rc == 0, err
    assert result["written"] == "base-model" and result["best_step"] == 0
    assert "no trained step beat the zero-shot model" in err
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(str(out))), runs["base_logits"]["logits"])


def test_overwrite_replaces_only_an_earlier_export(runs, tmp_path, capsys):
    run = str(runs["lora"]["dir"])
    out = tmp_path / "out"
    assert _export(capsys, run, str(out), "--no-merge-lora")[0] == 0
    first = json.loads((out / EXPORT_MARKER).read_text())

    rc, result, err = _export(capsys, run, str(out))  # an earlier export, no --overwrite
    assert rc == 2 and result is None and "holds an earlier export" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    rc, result, err = _export(capsys, run, str(out), "--overwrite")
    assert rc == 0, err
    assert result["written"] == "merged-lora" and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # the earlier export's files went with it
    assert json.loads((out / EXPORT_MARKER).read_text())["created"] >= first["created"]

    (out / "notes.txt").write_text("mine")  # something the export did not write: never removed
    rc, _, err = _export(capsys, run, str(out), "--overwrite")
    assert rc == 2 and "notes.txt" in err and (out / "notes.txt").read_text() == "mine"

    other = tmp_path / "project"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n")
    for flags in ((), ("--overwrite",)):
        rc, _, err = _export(capsys, run, str(other), *flags)
        assert rc == 2 and "not written by zotune export" in err and "data.csv" in err
        assert sorted(p.name for p in other.iterdir()) == ["data.csv"]

    (other / "data.csv").unlink()  # an existing empty folder is fine
    assert _export(capsys, run, str(other))[0] == 0 and (other / EXPORT_MARKER).is_file()


@pytest.mark.parametrize("case,message", [
    ("not-a-run", "not a zotune run folder"),
    ("missing", "run folder not found"),
    ("no-checkpoint", "has no best checkpoint"),
    ("inside-run", "inside the run folder"),
    ("out-is-file", "is a file"),
    ("private-alone", "--private applies only with --push-to-hub"),
    ("bad-repo", "not a valid repo id"),
])
def test_input_errors_are_one_line_before_the_model_loads(case, message, runs, tmp_path, capsys, monkeypatch):
    import zotune.llm.models as models

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    run, out = runs["full"]["dir"], tmp_path / "out"
    extra: list[str] = []
    if case == "not-a-run":
        run = tmp_path / "plain"
        run.mkdir()
    elif case == "missing":
        run = tmp_path / "nowhere"
    elif case == "no-checkpoint":
        run = tmp_path / "copy"
        run.mkdir()
        for name in ("zotune-run.json", "config.yaml", "summary.json"):
            (run / name).write_bytes((runs["full"]["dir"] / name).read_bytes())
    elif case == "inside-run":
        out = run / "hf"
    elif case == "out-is-file":
        out.write_text("x")
    elif case == "private-alone":
        extra = ["--private"]
    elif case == "bad-repo":
        extra = ["--push-to-hub", "not a repo!!"]
    rc, result, err = _export(capsys, str(run), str(out), *extra)
    assert rc == 2 and result is None
    assert err.startswith("zotune export: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert case == "out-is-file" or not out.exists()


class _FakeApi:
    """Records the hub calls; ``fail`` makes the upload raise what a machine without network sees."""

    calls: list[tuple[str, dict[str, Any]]] = []
    fail: BaseException | None = None

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", kwargs))
        if self.fail is not None:
            raise self.fail
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[_FakeApi]:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    _FakeApi.calls, _FakeApi.fail = [], None
    return _FakeApi


def test_push_to_hub_uploads_the_written_folder(runs, tmp_path, capsys, fake_hub):
    out = tmp_path / "pushed"
    rc, result, err = _export(capsys, str(runs["full"]["dir"]), str(out), "--push-to-hub", "me/tiny-zo", "--private")
    assert rc == 0, err
    assert result["pushed_to"] == "me/tiny-zo" and result["commit_url"].endswith("/commit/abc")
    (create, create_kw), (upload, upload_kw) = fake_hub.calls
    assert create == "create_repo" and create_kw == {"repo_id": "me/tiny-zo", "repo_type": "model", "private": True,
                                                     "exist_ok": True}
    assert upload == "upload_folder" and upload_kw["repo_id"] == "me/tiny-zo" and upload_kw["repo_type"] == "model"
    assert Path(upload_kw["folder_path"]) == out and EXPORT_MARKER in upload_kw["ignore_patterns"]
    assert 'from_pretrained("me/tiny-zo")' in (out / "README.md").read_text()
    assert json.loads((out / EXPORT_MARKER).read_text())["pushed_to"] == "me/tiny-zo"


def test_push_failure_is_one_line_and_keeps_the_folder(runs, tmp_path, capsys, fake_hub):
    fake_hub.fail = ConnectionError("Failed to resolve 'huggingface.co'\n(more detail on a second line)")
    out = tmp_path / "kept"
    rc, result, err = _export(capsys, str(runs["full"]["dir"]), str(out), "--push-to-hub", "me/tiny-zo")
    assert rc == 1 and result["pushed_to"] is None
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # (stderr also has the loading bar)
    assert len(errors) == 1 and errors[0].startswith("zotune export: error: could not push")
    assert "ConnectionError" in errors[0] and "hf upload me/tiny-zo" in errors[0] and "Traceback" not in err
    assert (out / "model.safetensors").is_file() and json.loads((out / EXPORT_MARKER).read_text())["pushed_to"] is None


def test_push_without_token_is_refused_before_loading(runs, tmp_path, capsys, fake_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "never"
    rc, _, err = _export(capsys, str(runs["full"]["dir"]), str(out), "--push-to-hub", "me/tiny-zo")
    assert rc == 2 and "needs a Hugging Face token" in err and not out.exists() and fake_hub.calls == []
