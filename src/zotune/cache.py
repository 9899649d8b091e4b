"""Where zotune keeps what it fetches or builds once per machine (models, datasets, native kernels)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Root of zotune's cache: ``$ZOTUNE_CACHE`` if set, else ``~/.cache/zotune``."""
    root = os.environ.get("ZOTUNE_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "zotune"
    path.mkdir(parents=True, exist_ok=True)
    return path
