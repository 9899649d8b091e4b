"""Model loading by local folder, aliases and errors; the asset cache helpers."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny import save_tiny
from zotune.llm import data
from zotune.llm.models import available_models, load_model, resolve_dtype


def test_load_local_folder_with_dtype(tmp_path):
    folder = save_tiny(tmp_path / "m", arch="qwen2")
    loaded = load_model(str(folder), dtype="bfloat16")
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.pad_token_id is not None and not loaded.model.training


def test_unknown_models_list_the_aliases(tmp_path):
    assert available_models() == ["gemma3-270m", "smollm2-135m"]
    with pytest.raises(ValueError, match="unknown model 'gpt-9'.*Known aliases: gemma3-270m, smollm2-135m"):
        load_model("gpt-9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))


def test_resolve_dtype():
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_cache_dir_and_atomic_write(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    assert data.cache_dir() == tmp_path / "cache" and data.cache_dir().is_dir()
    target = tmp_path / "out" / "f.json"
    data.atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}" and [p.name for p in target.parent.iterdir()] == ["f.json"]
    with pytest.raises(KeyError, match="unknown asset"):
        data.fetch("not-an-asset")
