"""Which weight tensors DiZO projects, found from the module tree rather than from one model's names.

The official DiZO code picks its tensors by testing whether the first parameter is called
``model.decoder.embed_tokens.weight`` (OPT) and then matching OPT names, so on Llama it silently projects
nothing (dizo.md §9). Here the set S is read from the *structure* of the module tree, which every
transformers decoder shares:

* an **attention block** is a module with at least two of the three sibling projections query, key and
  value (children called ``q_proj``/``k_proj``/``v_proj`` in OPT, Llama, Gemma, Qwen, Mistral;
  ``query``/``key``/``value`` in BERT; ``q_lin``... in DistilBERT; ``q``/``k``/``v`` in T5; ``wq``...);
* the tensor projected for a role is that child's ``weight`` (a matrix); a PEFT-wrapped projection
  (``k_proj.base_layer.weight``) counts as the projection it wraps;
* in **LoRA mode** S is every LoRA tensor: everything under a ``lora_A`` / ``lora_B`` (or
  ``lora_embedding_A`` / ``lora_embedding_B``) container.

Model paths are the module tree written down, so the same rules work on a model (all of its
parameters, frozen ones included) and on the ``(name, tensor)`` pairs an optimizer was given.

Presets (``which``): ``"kv"`` (key + value weights: the official code's choice and the default),
``"qv"`` (query + value: the paper's summaries), ``"qkv"``, ``"lora"``, ``"auto"`` (LoRA tensors when the
model has any, else ``"kv"``) and ``"all"`` (every tensor).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

import torch
from torch import nn

__all__ = [
    "PRESETS",
    "ROLE_NAMES",
    "find_attention_blocks",
    "is_lora_path",
    "select_projection_targets",
]

# Child names of the separate query / key / value projections across model families.
ROLE_NAMES: dict[str, frozenset[str]] = {
    "query": frozenset({"q_proj", "query", "q", "wq", "q_lin", "query_proj"}),
    "key": frozenset({"k_proj", "key", "k", "wk", "k_lin", "key_proj"}),
    "value": frozenset({"v_proj", "value", "v", "wv", "v_lin", "value_proj"}),
}
# Fused projections hold q, k and v in one matrix: their k and v parts cannot be rescaled separately.
FUSED_NAMES = frozenset({"qkv_proj", "qkv", "c_attn", "query_key_value", "wqkv", "in_proj"})
LORA_CONTAINERS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"})
WRAPPERS = frozenset({"base_layer"})  # PEFT keeps the wrapped nn.Linear under this child name

PRESETS: dict[str, tuple[str, ...]] = {
    "kv": ("key", "value"),
    "qv": ("query", "value"),
    "qkv": ("query", "key", "value"),
    "lora": (),
    "auto": (),
    "all": (),
}

NamedTensors = Iterable[tuple[str, torch.Tensor]]
ModelOrNamed = Union[nn.Module, NamedTensors]


def is_lora_path(name: str) -> bool:
    """True for a parameter that lives inside a LoRA container (``...q_proj.lora_A.default.weight``)."""
    return any(part in LORA_CONTAINERS for part in name.split("."))


def _projection_of(name: str) -> tuple[str, str] | None:
    """``(block path, projection child name)`` of a projection *weight*, or None for anything else."""
    parts = name.split(".")
    if len(parts) < 3 or parts[-1] != "weight" or is_lora_path(name):
        return None
    module = parts[:-1]
    while module and module[-1] in WRAPPERS:  # k_proj.base_layer.weight is k_proj's weight
        module = module[:-1]
    if len(module) < 2:
        return None
    return ".".join(module[:-1]), module[-1]


def _role(child: str) -> str | None:
    for role, names in ROLE_NAMES.items():
        if child in names:
            return role
    return None


def find_attention_blocks(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Attention blocks among parameter paths: ``{block path: {role: parameter name}}``.

    A block qualifies when at least two of its children are query/key/value projections, so a stray
    child called ``k`` or ``value`` elsewhere in a model is not mistaken for attention.
    """
    blocks: dict[str, dict[str, str]] = {}
    for name in names:
        found = _projection_of(name)
        if found is None:
            continue
        block, child = found
        role = _role(child)
        if role is not None:
            blocks.setdefault(block, {})[role] = name
    return {block: roles for block, roles in blocks.items() if len(roles) >= 2}


def _fused_projections(names: Iterable[str]) -> list[str]:
    fused = []
    for name in names:
        found = _projection_of(name)
        if found is not None and found[1].lower() in FUSED_NAMES:
            fused.append(name)
    return fused


def _named(source: ModelOrNamed) -> list[tuple[str, torch.Tensor]]:
    if isinstance(source, nn.Module):
        return list(source.named_parameters())  # frozen tensors too: they tell the structure apart
    pairs = list(source)
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(
                "select_projection_targets takes a model or (name, tensor) pairs such as model.named_parameters()"
            )
    return pairs


def select_projection_targets(source: ModelOrNamed, which: str = "kv") -> list[tuple[str, torch.Tensor]]:
    """The ``(name, tensor)`` pairs DiZO should project, in the model's order.

    Args:
        source: a model, or ``(name, tensor)`` pairs such as ``model.named_parameters()``.
        which: ``"kv"`` (default, the official code), ``"qv"``, ``"qkv"``, ``"lora"``, ``"auto"`` or
            ``"all"`` (see the module docstring).

    Raises:
        ValueError: unknown preset, or nothing matched (with the reason: no attention block found, a
            fused qkv projection, no LoRA tensor).

    Example:
        >>> targets = select_projection_targets(model, "kv")       # k_proj / v_proj weight of every block
        >>> opt = zotune.dizo(model.named_parameters(), lr=1e-6, projected=targets)
    """
    if which not in PRESETS:
        raise ValueError(f"unknown projection preset {which!r}; use one of {', '.join(PRESETS)}")
    named = _named(source)
    if which == "all":
        return named
    lora = [(n, p) for n, p in named if is_lora_path(n)]
    if which == "lora" or (which == "auto" and lora):
        if not lora:
            raise ValueError("no LoRA tensor (lora_A / lora_B) found: is the LoRA adapter applied?")
        return lora
    roles = PRESETS["kv" if which == "auto" else which]
    blocks = find_attention_blocks(n for n, _ in named)
    chosen = {name for block in blocks.values() for role, name in block.items() if role in roles}
    if not chosen:
        fused = _fused_projections(n for n, _ in named)
        if fused:
            raise ValueError(
                f"the attention blocks use a fused query/key/value projection ({fused[0]}), whose key and value "
                "parts cannot be rescaled separately; pass projected= a regular expression over parameter names "
                "or a list of tensors instead"
            )
        raise ValueError(
            f"no attention block with separate {'/'.join(roles)} projections was found among {len(named)} "
            "parameters (children named like q_proj/k_proj/v_proj or query/key/value); pass projected= a "
            "regular expression over parameter names or a list of tensors instead"
        )
    return [(n, p) for n, p in named if n in chosen]
