"""Which parameters a ZO run perturbs: full fine-tuning, LoRA or prefix tuning (through the ``peft`` library).

The trainable set is simply the parameters with ``requires_grad=True``; the optimizer gets exactly
those. LoRA targets are found from the module structure (the query and value projections of every
attention block), so one code path serves OPT, Llama, Gemma, Qwen and GPT-2-style models.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["PEFT_MODES", "PeftSettings", "find_qv_targets", "apply_peft", "trainable_parameters", "base_causal_lm"]

PEFT_MODES = ("full", "lora", "prefix")

# Names a query / value projection goes by in the transformers model zoo; a fused q|k|v projection
# (GPT-2's c_attn, GPT-NeoX's query_key_value) is targeted whole when no separate ones exist.
_QUERY = re.compile(r"^(q|q_proj|query|wq|q_lin)$")
_VALUE = re.compile(r"^(v|v_proj|value|wv|v_lin)$")
_FUSED = re.compile(r"^(c_attn|query_key_value|qkv|qkv_proj|wqkv|Wqkv|in_proj)$")


@dataclass(frozen=True)
class PeftSettings:
    """MeZO's adapter defaults: LoRA r=8, alpha=16 on q and v; 5 prefix tokens initialised from real activations."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    num_virtual_tokens: int = 5
    prefix_init_real: bool = True
    train_embeddings: bool = False  # full mode: also perturb the (large) token embedding / tied LM head

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")


def _is_projection(module: nn.Module) -> bool:
    # GPT-2 uses transformers' Conv1D (a transposed Linear); match it by name to avoid importing it.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def find_qv_targets(model: nn.Module) -> list[str]:
    """Child names of the query and value projections inside the model's attention blocks.

    An attention block is a module whose class name contains "Attention" or "Attn" and that has
    projection children. Raises ``ValueError`` when none is found.
    """
    separate: set[str] = set()
    fused: set[str] = set()
    for module in model.modules():
        cls = type(module).__name__.lower()
        if "attention" not in cls and "attn" not in cls:
            continue
        for child_name, child in module.named_children():
            if not _is_projection(child):
                continue
            if _QUERY.match(child_name) or _VALUE.match(child_name):
                separate.add(child_name)
            elif _FUSED.match(child_name):
                fused.add(child_name)
    if separate:
        return sorted(separate)
    if fused:
        return sorted(fused)
    raise ValueError(
        f"could not find query/value projections in {type(model).__name__}: no attention block has a "
        "child named like q_proj/v_proj, query/value or a fused c_attn/query_key_value"
    )


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a possibly peft-wrapped model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _embedding_params(model: nn.Module) -> set[int]:
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


def is_prefix_tuned(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model whose active adapter is prefix tuning."""
    config = getattr(model, "active_peft_config", None)
    return getattr(config, "peft_type", None) == "PREFIX_TUNING"  # peft's PeftType is a str enum


def _cache_argument(lm: nn.Module) -> str:
    """The name under which ``lm``'s forward takes a key/value cache: ``cache`` in transformers 5.x, where
    ``past_key_values`` is deprecated (removal announced for 5.40), ``past_key_values`` before."""
    return _cache_argument_of(type(lm))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(cls: type) -> str:  # once per model class, not on every forward
    try:
        parameters = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def model_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
    """``model(input_ids=..., attention_mask=..., **kwargs)``, with a prefix-tuned peft model's prefix handed to
    the base model under the cache argument it supports.

    peft (0.17-0.21) prefix tuning passes the prefix as ``past_key_values=``, which transformers 5.24 warns
    about on every forward and announces to remove in 5.40. This does what peft's
    ``PeftModelForCausalLM.forward`` does for prefix tuning (a prefix cache from ``get_prompt`` sized for the
    batch, ones prepended to the attention mask for the virtual tokens), passing the cache as ``cache=`` where the
    base model takes it. Any other model is called as it is. ``tests/test_llm_peft.py`` proves the logits equal
    to peft's own forward.
    """
    if not is_prefix_tuned(model) or "position_ids" in kwargs:
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    batch, virtual = input_ids.shape[0], model.active_peft_config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1)
    return prefix_forward(model, input_ids, attention_mask=mask, **kwargs)


def prefix_forward(model: nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> Any:
    """The base model of a prefix-tuned peft ``model`` called on ``input_ids`` with the prefix's cache, sized for
    the batch as peft's ``get_prompt`` builds it, under the cache argument the base model takes. ``kwargs`` (the
    attention mask among them) must already count the virtual tokens."""
    lm = base_causal_lm(model)
    virtual = model.active_peft_config.num_virtual_tokens
    prefix = model.get_prompt(input_ids.shape[0], max_cache_len=input_ids.shape[1] + virtual)
    return lm(input_ids=input_ids, **{_cache_argument(lm): prefix}, **kwargs)


def _returned_cache(output: Mapping[str, Any]) -> Any:
    """The key/value cache a ``use_cache=True`` forward returned.

    transformers 5 (5.24 here) renamed the output field ``past_key_values`` to ``cache`` and keeps the old name
    only as a deprecated alias: reading it logs "`past_key_values`/`cache_params` are deprecated. Use `cache`
    instead." (the forward argument of that name is announced to go in 5.40; the alias has no date). The new
    name is read first, the old one only from versions that lack it.
    """
    cache = output.get("cache")
    if cache is None:
        cache = output.get("past_key_values")
    if cache is None:
        raise ValueError(f"the forward returned no key/value cache (output fields: {', '.join(output.keys())})")
    return cache


@torch.no_grad()
def _init_prefix_from_activations(peft_model: nn.Module, seed: int) -> None:
    """MeZO's prefix init: the keys/values of real vocabulary tokens run through the frozen model.

    The MeZO authors found this "crucial" for stable ZO prefix tuning; peft's default is a random
    normal init. peft stores the prefix as an embedding of shape (tokens, layers * 2 * kv_dim) and
    splits it into (layer, key|value, head, head_dim) in that order.
    """
    lm = base_causal_lm(peft_model)
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    weight = encoder.embedding.weight
    n_tokens = weight.shape[0]
    vocab = lm.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    # drawn on the CPU (where the generator lives) and then moved: drawing on a CUDA model's device with a CPU
    # generator raised, so the default run failed on any GPU (issue 15)
    ids = torch.randint(0, vocab, (1, n_tokens), generator=gen).to(weight.device)
    cache = _returned_cache(lm(input_ids=ids, use_cache=True))
    rows = []
    for layer in cache.layers:
        # (1, kv_heads, tokens, head_dim) -> (tokens, kv_heads * head_dim)
        rows.append(layer.keys[0].permute(1, 0, 2).reshape(n_tokens, -1))
        rows.append(layer.values[0].permute(1, 0, 2).reshape(n_tokens, -1))
    flat = torch.cat(rows, dim=1)
    if flat.shape != weight.shape:
        raise ValueError(f"prefix init shape mismatch: activations {tuple(flat.shape)} vs prefix {tuple(weight.shape)}")
    weight.copy_(flat.to(weight.dtype))


def apply_peft(model: nn.Module, mode: str, settings: PeftSettings | None = None, *, seed: int = 0) -> nn.Module:
    """Return the model to train in ``mode`` (full, lora or prefix) with ``requires_grad`` set accordingly."""
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    settings = settings or PeftSettings()
    if mode not in PEFT_MODES:
        raise ValueError(f"unknown peft mode {mode!r}; use one of {', '.join(PEFT_MODES)}")
    if mode == "full":
        skip = set() if settings.train_embeddings else _embedding_params(model)
        for param in model.parameters():
            param.requires_grad_(id(param) not in skip)
        return model
    for param in model.parameters():
        param.requires_grad_(False)
    if mode == "lora":
        targets = find_qv_targets(model)
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=targets,
            fan_in_fan_out=type(_first_target(model, targets)).__name__ == "Conv1D",
        )
        # LoRA's A is drawn from torch's global generator: seed it from the run's seed inside a forked RNG, so
        # the same seed gives the same adapter (resume and replay rebuild it) and the caller's RNG is untouched
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens)
    peft_model = get_peft_model(model, config)
    if settings.prefix_init_real:
        _init_prefix_from_activations(peft_model, seed)
    return peft_model


def _first_target(model: nn.Module, targets: list[str]) -> nn.Module:
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            return module
    raise ValueError(f"no module named {targets}")


def trainable_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the parameters the optimizer perturbs: those with ``requires_grad``."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (nothing has requires_grad=True)")
    return params
