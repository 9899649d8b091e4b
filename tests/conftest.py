"""Shared test settings: few threads (CI machines have 2 cores) and deterministic algorithms; the tiny
offline llama most LLM tests train (a test file may define its own ``tiny_dir``, e.g. another architecture)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from fixtures.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama")
