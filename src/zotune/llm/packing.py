"""Padding-free forwards: several sequences packed into one row, kept apart by a block-diagonal causal mask.

A batch of short sentences padded to its longest (or cut into length groups, ``objectives.length_groups``)
still computes every padded token: on the main job's ``mr`` batches a quarter of the tokens a forward
computes are padding (``benchmarks/main_job/results/forward_profile.*.json``). Packing puts the sequences
end to end in rows of about ``row_tokens`` tokens, so only the rows' tails are padding. Each token then sees

    the prefix's virtual tokens (prefix tuning), and the earlier tokens of its own sequence,

through an additive 4D attention mask (0 where it may attend, the dtype's minimum elsewhere), and gets the
position it would have had alone: ``virtual + offset in its sequence``. That is the same attention over the
same keys as the padded forward, so the hidden states agree up to the rounding of other matrix shapes (proved
per architecture in ``tests/test_llm_packing.py``).

Only where that equality is known: a transformers class on ``PACKABLE`` whose attention is ``sdpa`` or
``eager`` (which take a 4D additive mask as it is; flash-attention kernels ignore such a mask), with no
sliding-window layers, and, for peft models, LoRA-style adapters or prefix tuning (prompt tuning adds input
tokens, which this layout does not place). Everything else keeps the length groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zotune.llm.peft import base_causal_lm, is_prefix_tuned, prefix_forward

# Rotary decoders whose forward takes ``position_ids`` and a prepared 4D mask unchanged (transformers'
# ``create_causal_mask`` returns a 4D mask as it is, 4.56 to 5.24). Absolute-position models (GPT-2, OPT)
# and models with sliding-window or hybrid layers are left out (Mistral packs only with ``sliding_window``
# None, as its v0.2+ configs have it); each entry is tested on a tiny model in tests/test_llm_packing.py.
PACKABLE = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"})

# Tokens per packed row. Attention inside a row costs row_tokens^2 while padding only falls at a row's end:
# measured on SmolLM2-135M's mr batches of 16 (benchmarks/main_job/padding.py: rows of 64, 128 and one row
# alike, 256 slower).
ROW_TOKENS = 128


def _class_unsupported(name: str) -> str:
    return f"{name} is not one of the classes packing is proved for ({', '.join(sorted(PACKABLE))})"


def _layers_unsupported(config: object) -> str | None:
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types) or (
            getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)):
        return "the model has sliding-window attention layers"
    return None


def packing_unsupported_by_config(config: object) -> str | None:
    """The part of :func:`packing_unsupported` that a model's config decides before any weight loads: the
    causal-LM class transformers builds for its ``model_type``, and sliding-window layers. None does not
    promise packing: the loaded model is checked again (its attention implementation, its adapter)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if model_type else None
    if name not in PACKABLE:
        return _class_unsupported(name or f"model type {model_type!r}")
    return _layers_unsupported(config)


def packing_unsupported(model: nn.Module) -> str | None:
    """None when ``model``'s forward can run packed rows, else why not (one line)."""
    import transformers

    lm = base_causal_lm(model)
    kind = type(lm)
    if kind.__name__ not in PACKABLE or getattr(transformers, kind.__name__, None) is not kind:
        return _class_unsupported(kind.__name__)
    config = lm.config
    attention = getattr(config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        return f"attention implementation {attention!r} does not take a 4D mask (sdpa or eager do)"
    layers = _layers_unsupported(config)
    if layers is not None:
        return layers
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False) and not is_prefix_tuned(model):
        return f"peft {peft_config.peft_type} adds input tokens, which packed rows do not place"
    return None


def pack_rows(lengths: Sequence[int], row_tokens: int = ROW_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` packed into rows of at most ``max(row_tokens, longest)`` tokens: first fit,
    longest first (ties in input order), so a batch always packs the same way."""
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    capacity = max([row_tokens, *lengths])
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


@dataclass
class PackedBatch:
    """Model inputs for packed rows, and where each sequence starts: ``starts[i] = (row, column)``."""

    input_ids: torch.Tensor  # (R, T)
    position_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor  # (R, 1, T, virtual + T), additive
    starts: list[tuple[int, int]]


def build_packed(seqs: Sequence[list[int]], rows: Sequence[Sequence[int]], pad_id: int, virtual: int,
                 dtype: torch.dtype) -> PackedBatch:
    """Rows of ``seqs`` end to end (``rows`` from :func:`pack_rows`), with positions and the additive mask.

    Padding at a row's end attends to itself only, so no softmax row is empty; nothing reads its output.
    """
    width = max(sum(len(seqs[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which sequence a token belongs to
    starts: list[tuple[int, int]] = [(0, 0)] * len(seqs)
    for r, row in enumerate(rows):
        column = 0
        for i in row:
            n = len(seqs[i])
            ids[r, column: column + n] = torch.tensor(seqs[i], dtype=torch.long)
            positions[r, column: column + n] = torch.arange(virtual, virtual + n)
            segment[r, column: column + n] = i
            starts[i] = (r, column)
            column += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    real = (segment >= 0)[:, :, None]
    allowed = (same & causal & real) | torch.eye(width, dtype=torch.bool)
    allowed = torch.cat([torch.ones(len(rows), width, virtual, dtype=torch.bool), allowed], dim=2)  # the prefix
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return PackedBatch(ids, positions, mask[:, None], starts)


def packed_forward(model: nn.Module, batch: PackedBatch, device: torch.device) -> None:
    """One forward of the packed rows (outputs are read through the caller's hidden-state capture)."""
    ids = batch.input_ids.to(device)
    kwargs = {"input_ids": ids, "attention_mask": batch.attention_mask.to(device),
              "position_ids": batch.position_ids.to(device), "use_cache": False}
    if is_prefix_tuned(model):
        prefix_forward(model, **kwargs)  # the prefix's cache sized for the rows; the mask already covers it
    else:
        model(**kwargs)


def virtual_tokens(model: nn.Module) -> int:
    """How many virtual tokens precede every sequence (prefix tuning), else 0."""
    return model.active_peft_config.num_virtual_tokens if is_prefix_tuned(model) else 0
