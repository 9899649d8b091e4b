"""Losses and scores for fine-tuning a causal LM on a task, computed forward-only.

Classification and multiple choice are language modelling: a candidate's score is the mean
log-probability of its tokens after the prompt. The vocabulary projection is the expensive part
of a small model's forward (Gemma-3 has 262k tokens), so logits are computed only where they are
used: the hidden states are taken at the scored positions and multiplied by the rows of the
output embedding that are needed.

* Fast path (every candidate is one token, e.g. " great" / " terrible"): one sequence per example
  (the prompt alone) and ``hidden[last] @ W[candidate_ids].T``. These logits differ from the true
  log-probabilities by the log-partition of that position, the same for every candidate of the
  example, so the cross-entropy over candidates and the argmax are exactly those of the full path.
* General path: one sequence per (example, candidate); full-vocabulary log-softmax, but only at
  the candidate's positions, never at the prompt's.

Doing the projection by hand means repeating what the model's forward does after its LM head: Granite
divides the logits by ``config.logits_scaling``, Cohere multiplies them by ``logit_scale``, Gemma 2/3
soft-cap them. The hand head is used only for the exact transformers classes listed in ``_HAND_HEADS``,
each read from its forward and checked against it in the tests; any other model (a subclass, a class
not listed, an LM head that is not a plain ``nn.Linear``, e.g. one with a LoRA adapter) is scored from
its own full logits at the same positions, with a one-time warning: slower, never wrong.

A batch is not padded to its longest sequence in one forward: its sequences are sorted by length and
cut into the groups that minimise padded tokens plus a fixed cost per forward call
(:func:`length_groups`; the cost is scaled to the model's size by :func:`group_overhead_for`). Right padding under an attention mask leaves the real tokens' hidden states
unchanged, so this only removes work (on ``mr`` batches of 16: 30% fewer tokens, 0.64x the time).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zotune.llm.metrics import f1_score, max_over_answers
from zotune.llm.packing import ROW_TOKENS, build_packed, pack_rows, packed_forward, packing_unsupported, virtual_tokens
from zotune.llm.peft import base_causal_lm, is_prefix_tuned, model_forward
from zotune.llm.tasks.base import Example

__all__ = ["OBJECTIVES", "Scorer", "full_logits_scores", "group_overhead_for", "length_groups", "resolve_objective"]

# ce: cross-entropy over candidates; lm: teacher-forced token loss on the answer / gold candidate;
# f1 / accuracy: non-differentiable, minus the metric of the model's own output
OBJECTIVES = ("auto", "ce", "lm", "f1", "accuracy")


def resolve_objective(objective: str, task_kind: str, default: str) -> str:
    """Check an objective against a task kind; ``auto`` gives the task's MeZO default."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return default
    if task_kind == "generation" and objective in ("ce", "accuracy"):
        raise ValueError(f"objective {objective!r} needs candidates; a generation task uses lm or f1")
    if task_kind != "generation" and objective == "f1":
        raise ValueError("objective 'f1' is for generation tasks; use accuracy for classification")
    return objective


# A forward call's fixed cost (Python over the layers, small-matrix inefficiency) in padded-token units: a
# group is split off only where it saves more padding than this. Measured on SmolLM2-135M, 2 threads, AVX2,
# mr batches of 16 (benchmarks/main_job/padding.py): 0.64x the one padded forward at 96, 0.68x at 32 and 128,
# 1.23x at 0 (a forward per length).
GROUP_OVERHEAD_TOKENS = 96
_REFERENCE_PARAMETERS = 134_515_008  # SmolLM2-135M, where GROUP_OVERHEAD_TOKENS was measured


def group_overhead_for(model: nn.Module) -> int:
    """The per-forward cost in tokens for ``model``: ``GROUP_OVERHEAD_TOKENS`` scaled by 135M / its parameters.

    A token costs about two multiply-adds per parameter, while a forward's fixed cost (Python over the
    modules) hardly grows with width, so in token units the fixed cost shrinks as models grow. An assumption
    calibrated at one point: for a tiny test model it means one padded batch (splitting would only add
    forwards), for 1B parameters about 13 tokens.
    """
    parameters = sum(p.numel() for p in model.parameters())
    return int(min(10**9, round(GROUP_OVERHEAD_TOKENS * _REFERENCE_PARAMETERS / max(parameters, 1))))


def length_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` cut into forward groups: sorted by length, contiguous runs chosen by dynamic
    programming to minimise  sum over groups (size x longest) + overhead x number of groups.

    Deterministic (ties keep input order), so a run's batches always split the same way.
    """
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0, got {overhead}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest split of the j shortest
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * sizes[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j]: j])
        j = cut[j]
    return groups[::-1]


class _HiddenCapture(nn.Module):
    """Stands in for the LM head during a forward: records the final hidden states and returns a
    1-wide dummy, so the model spends no time on the vocabulary projection."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden = hidden
        return hidden.new_zeros(hidden.shape[:-1] + (1,))


@contextlib.contextmanager
def _capture_hidden(model: nn.Module) -> Iterator[_HiddenCapture]:
    lm = base_causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm).__name__} has no output embedding (LM head)")
    capture = _HiddenCapture()
    lm.set_output_embeddings(capture)
    try:
        yield capture
    finally:
        lm.set_output_embeddings(head)


@dataclass(frozen=True)
class _HeadRule:
    """What a ``*ForCausalLM.forward`` does to the output of its LM head before returning the logits.

    Each field names where the forward reads its constant, so the hand head reads the same value the
    model would (a config edited after loading changes both alike).
    """

    divide_by_config: str | None = None  # Granite family: logits / config.<name>
    multiply_by_attribute: str | None = None  # Cohere family: logits * self.<name> (copied from the config at init)
    softcap_config: str | None = None  # Gemma 2/3: tanh(logits / cap) * cap with cap = config.<name>, unless None


_PLAIN = _HeadRule()
_GRANITE = _HeadRule(divide_by_config="logits_scaling")
_COHERE = _HeadRule(multiply_by_attribute="logit_scale")
_GEMMA_SOFTCAP = _HeadRule(softcap_config="final_logit_softcapping")

# The contract of the fast path: the exact transformers classes whose logits are ``rule(lm_head(hidden))`` with
# ``lm_head`` a plain ``nn.Linear`` (checked at run time) and nothing else after it. Read from each class's
# ``forward`` in transformers 5.24, and each entry is checked against the model's own forward on a tiny
# model in tests/test_llm_objectives.py. Any other class -- a subclass too, since it may override
# ``forward`` -- gets its logits from the model's own forward (exact, but the full vocabulary at every position).
# Deliberately absent although their heads are known: multimodal wrappers (Gemma3ForConditionalGeneration
# and the like, whose forward differs from their text model's), HyperCLOVAX (logits * config.logits_scaling),
# FalconH1 (* model.lm_head_multiplier), RecurrentGemma / xLSTM / Inkling (other caps), which nothing tests.
_HAND_HEADS: dict[str, _HeadRule] = {
    **dict.fromkeys((
        "LlamaForCausalLM", "MistralForCausalLM", "MinistralForCausalLM", "MixtralForCausalLM",
        "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
        "GemmaForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "OPTForCausalLM", "GPT2LMHeadModel",
        "GPTNeoXForCausalLM", "GPTNeoForCausalLM", "GPTJForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM",
        "Olmo3ForCausalLM", "StableLmForCausalLM", "Starcoder2ForCausalLM", "SmolLM3ForCausalLM",
        "BloomForCausalLM", "GPTBigCodeForCausalLM", "FalconForCausalLM", "GlmForCausalLM", "Glm4ForCausalLM",
        "HeliumForCausalLM",
    ), _PLAIN),
    **dict.fromkeys(("Gemma2ForCausalLM", "Gemma3ForCausalLM"), _GEMMA_SOFTCAP),
    **dict.fromkeys(("GraniteForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM",
                     "GraniteMoeHybridForCausalLM"), _GRANITE),
    **dict.fromkeys(("CohereForCausalLM", "Cohere2ForCausalLM"), _COHERE),
}

_WARNED_MODEL_LOGITS: set[str] = set()  # classes already reported as taking the model-logits path


@dataclass
class _Head:
    """The output projection done by hand: weight rows, optional bias, then the model's own post-head steps
    (Granite's division, Cohere's scale, Gemma's soft-capping) in the order its forward applies them."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    divide: float | None = None
    multiply: float | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, model: nn.Module) -> "_Head | str":
        """The hand head of ``model``, or why its logits cannot be proved equal to the model's own."""
        import transformers

        lm = base_causal_lm(model)
        kind = type(lm)
        rule = _HAND_HEADS.get(kind.__name__)
        if rule is None or getattr(transformers, kind.__name__, None) is not kind:
            return f"{kind.__module__}.{kind.__qualname__} is not a transformers class whose LM head zotune reproduces"
        head = lm.get_output_embeddings()
        if type(head) is not nn.Linear:
            return f"the LM head of {kind.__name__} is a {type(head).__name__}, not a plain nn.Linear"
        divide = multiply = softcap = None
        if rule.divide_by_config is not None:
            divide = float(getattr(lm.config, rule.divide_by_config))
        if rule.multiply_by_attribute is not None:
            multiply = float(getattr(lm, rule.multiply_by_attribute))
        if rule.softcap_config is not None:
            cap = getattr(lm.config, rule.softcap_config, None)
            softcap = None if cap is None else float(cap)
        return cls(head.weight, head.bias, divide, multiply, softcap)

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits of ``hidden`` (..., H) for token ``rows`` (or the whole vocabulary)."""
        weight = self.weight if rows is None else self.weight[rows]
        out = hidden.float() @ weight.float().transpose(-1, -2)
        if self.bias is not None:
            out = out + (self.bias if rows is None else self.bias[rows]).float()
        if self.divide is not None:
            out = out / self.divide
        if self.multiply is not None:
            out = out * self.multiply
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


class Scorer:
    """Tokenises examples for one model and computes candidate scores and losses."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256,
                 group_overhead: int | str | None = "auto", packing: bool | str = "auto",
                 row_tokens: int = ROW_TOKENS) -> None:
        """``group_overhead``: a forward's fixed cost in tokens (see :func:`length_groups`); "auto" scales it
        to the model (:func:`group_overhead_for`); None pads each batch to its longest sequence in one forward.

        ``packing``: run the sequences end to end in rows of about ``row_tokens`` tokens, without padding
        (:mod:`zotune.llm.packing`). "auto" packs where the model supports it (else length groups), True or
        "on" requires it, False or "off" never packs."""
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if packing not in ("auto", "on", "off", True, False):
            raise ValueError(f"packing must be 'auto', 'on', 'off', True or False, got {packing!r}")
        packing = {"on": True, "off": False}.get(packing, packing)  # type: ignore[arg-type]
        if not isinstance(row_tokens, int) or row_tokens < 1:
            raise ValueError(f"row_tokens must be an int >= 1, got {row_tokens!r}")
        unsupported = packing_unsupported(model) if packing else None
        if packing is True and unsupported is not None:
            raise ValueError(f"packing is not available: {unsupported}")
        self.packing = bool(packing) and unsupported is None
        self.row_tokens = row_tokens
        if group_overhead == "auto":
            group_overhead = group_overhead_for(model)
        if group_overhead is not None and (not isinstance(group_overhead, int) or group_overhead < 0):
            raise ValueError(f"group_overhead must be 'auto', None or an int >= 0, got {group_overhead!r}")
        self.group_overhead = group_overhead
        self.model = model
        self.tok = tokenizer
        self.max_length = max_length
        self._cache: dict[tuple[str, str], tuple[list[int], int]] = {}
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- tokenisation ---
    def encode(self, prompt: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of prompt+continuation and the index where the continuation's tokens start.

        The pair is tokenised jointly (as the model saw text in pre-training) and the split is the
        longest common prefix with the prompt's own tokens, so tokenisers that merge across the
        boundary still score the right tokens. Long prompts are cut from the left, keeping a BOS.
        """
        key = (prompt, continuation)
        if key in self._cache:
            return self._cache[key]
        prompt_ids = self.tok(prompt).input_ids
        full = self.tok(prompt + continuation).input_ids if continuation else list(prompt_ids)
        start = 0
        for a, b in zip(prompt_ids, full):
            if a != b:
                break
            start += 1
        if continuation:
            start = min(start, len(full) - 1)  # at least one scored token
        if len(full) > self.max_length:
            cut = len(full) - self.max_length
            bos = self.tok.bos_token_id
            keep_bos = bos is not None and full[0] == bos
            if start - cut < 1 + keep_bos:
                raise ValueError(
                    f"the continuation alone needs {len(full) - start} tokens, more than max_length={self.max_length}"
                )
            full = ([full[0]] if keep_bos else []) + full[cut + keep_bos:]
            start -= cut
        self._cache[key] = (full, start)
        return full, start

    def single_token_split(self, example: Example) -> tuple[list[int], list[int]] | None:
        """``(context, candidate ids)`` when every candidate is one token scored after the same context.

        The context is what the slow path conditions each candidate on: the prompt's tokens as encoded
        with the candidate, cut from the left with it when the pair exceeds ``max_length``. (Comparing
        with the prompt encoded alone would miss the cut, which drops one more token once a candidate is
        appended, and send every truncated prompt down the slow path.)
        """
        if not example.candidates:
            return None
        context: list[int] | None = None
        ids = []
        for cand in example.candidates:
            full, start = self.encode(example.prompt, cand)
            if len(full) != start + 1 or (context is not None and full[:start] != context):
                return None
            context = full[:start]
            ids.append(full[start])
        if context is None or len(set(ids)) != len(ids):
            return None
        return context, ids

    def single_token_candidates(self, example: Example) -> list[int] | None:
        """Candidate token ids when every candidate is one token appended to a shared context."""
        split = self.single_token_split(example)
        return None if split is None else split[1]

    def _pad(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding keeps the real tokens' positions 0..n-1
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def hidden_states(self, seqs: Sequence[list[int]]) -> torch.Tensor:
        """Final hidden states (B, L, H) of the padded sequences, without the vocabulary projection."""
        ids, mask = self._pad(seqs)
        with _capture_hidden(self.model) as capture:
            model_forward(self.model, ids, mask, use_cache=False)
        if capture.hidden is None:
            raise RuntimeError("the model's forward did not call its LM head")
        return capture.hidden

    def model_logits(self, seqs: Sequence[list[int]]) -> torch.Tensor:
        """The model's own logits (B, L, V) of the padded sequences: its full forward, LM head included."""
        ids, mask = self._pad(seqs)
        logits = getattr(model_forward(self.model, ids, mask, use_cache=False), "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.shape[:2] != ids.shape:
            raise RuntimeError(f"{type(base_causal_lm(self.model)).__name__} did not return logits of shape "
                               f"(batch, length, vocabulary) for input of shape {tuple(ids.shape)}")
        return logits

    def _at_positions(self, seqs: Sequence[list[int]], positions: Sequence[Sequence[int]],
                      forward: Callable[[Sequence[list[int]]], torch.Tensor]) -> torch.Tensor:
        """``forward``'s rows at ``positions[i]`` of each sequence ``i``, stacked in order into (sum of the
        counts, ...), from forwards over length groups (:func:`length_groups`) instead of one padded batch."""
        parts: list[torch.Tensor | None] = [None] * len(seqs)
        lengths = [len(s) for s in seqs]
        groups = [list(range(len(seqs)))] if self.group_overhead is None else length_groups(lengths, self.group_overhead)
        for group in groups:
            out = forward([seqs[i] for i in group])
            for row, i in enumerate(group):
                parts[i] = out[row, torch.as_tensor(list(positions[i]), dtype=torch.long, device=out.device)]
        return torch.cat(parts)  # type: ignore[arg-type]

    def hidden_at(self, seqs: Sequence[list[int]], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Final hidden states at ``positions[i]`` of each sequence ``i``, stacked in order into (sum of the
        counts, H): from packed rows where ``self.packing``, else from length groups."""
        if self.packing:
            return self._packed_hidden_at(seqs, positions)
        return self._at_positions(seqs, positions, self.hidden_states)

    def _packed_hidden_at(self, seqs: Sequence[list[int]], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        rows = pack_rows([len(s) for s in seqs], self.row_tokens)
        lm = base_causal_lm(self.model)
        batch = build_packed(seqs, rows, self.pad_id, virtual_tokens(self.model), lm.dtype)
        with _capture_hidden(self.model) as capture:
            packed_forward(self.model, batch, self.device)
        if capture.hidden is None:
            raise RuntimeError("the model's forward did not call its LM head")
        width = batch.input_ids.shape[1]
        flat = [row * width + column + p for (row, column), ps in zip(batch.starts, positions) for p in ps]
        hidden = capture.hidden
        return hidden.reshape(-1, hidden.shape[-1])[torch.tensor(flat, dtype=torch.long, device=hidden.device)]

    def model_logits_at(self, seqs: Sequence[list[int]], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """The model's own float32 logits at ``positions[i]`` of each sequence ``i``, stacked in order into (sum of
        the counts, V)."""
        return self._at_positions(seqs, positions, self.model_logits).float()

    # --- logits ---
    def _head(self) -> _Head | None:
        """The hand head when the model's class is on the fast path's list (``_HAND_HEADS``), else None: the
        scores then come from the model's own logits, and the first time per class a warning says so."""
        found = _Head.of(self.model)
        if isinstance(found, _Head):
            return found
        kind = type(base_causal_lm(self.model))
        name = f"{kind.__module__}.{kind.__qualname__}"
        if name not in _WARNED_MODEL_LOGITS:
            _WARNED_MODEL_LOGITS.add(name)
            warnings.warn(f"zotune scores {name} from the model's own full-vocabulary logits (slower, same scores): "
                          f"{found}", UserWarning, stacklevel=3)
        return None

    @property
    def uses_model_logits(self) -> bool:
        """True when scores come from the model's own forward instead of the hand head (an unlisted class)."""
        return not isinstance(_Head.of(self.model), _Head)

    def _vocab_logits_at(self, seqs: Sequence[list[int]], positions: Sequence[Sequence[int]],
                         head: _Head | None) -> torch.Tensor:
        """float32 full-vocabulary logits (sum of the counts, V) at ``positions``: from the hand head at just
        those positions, or from the model's forward when ``head`` is None."""
        if head is None:
            return self.model_logits_at(seqs, positions)
        return head.logits(self.hidden_at(seqs, positions))

    # --- scores ---
    def candidate_scores(self, examples: Sequence[Example], fast: bool = True) -> list[torch.Tensor]:
        """Per example, a float32 vector of candidate scores (mean log-prob of the candidate's tokens;
        in the fast path, up to a per-example constant that cancels in softmax and argmax)."""
        head = self._head()
        splits = [self.single_token_split(ex) for ex in examples] if fast else [None] * len(examples)
        singles = [None if split is None else split[1] for split in splits]
        out: list[torch.Tensor | None] = [None] * len(examples)
        fast_idx = [i for i, s in enumerate(singles) if s is not None]
        if fast_idx:
            seqs = [splits[i][0] for i in fast_idx]  # type: ignore[index]
            last = [[len(s) - 1] for s in seqs]  # each prompt's last position
            if head is None:
                z = self.model_logits_at(seqs, last)  # (B, V)
                for row, i in enumerate(fast_idx):
                    out[i] = z[row, torch.tensor(singles[i], device=z.device)]
            else:
                h = self.hidden_at(seqs, last)  # (B, H)
                for row, i in enumerate(fast_idx):
                    out[i] = head.logits(h[row], torch.tensor(singles[i], device=h.device))
        slow_idx = [i for i, s in enumerate(singles) if s is None]
        if slow_idx:
            seqs, owners, starts = [], [], []
            for i in slow_idx:
                if not examples[i].candidates:
                    raise ValueError("candidate scores need an example with candidates")
                for cand in examples[i].candidates:
                    full, start = self.encode(examples[i].prompt, cand)
                    seqs.append(full)
                    starts.append(start)
                    owners.append(i)
            token_lp = self._token_logprobs(seqs, starts, head)
            per_seq = torch.stack([lp.mean() for lp in token_lp])
            pos = 0
            for i in slow_idx:
                n = len(examples[i].candidates)
                out[i] = per_seq[pos: pos + n]
                pos += n
        return out  # type: ignore[return-value]

    def _token_logprobs(self, seqs: list[list[int]], starts: list[int], head: _Head | None) -> list[torch.Tensor]:
        """log p(token) of each sequence's tokens from ``start`` on, with the vocabulary projection done
        only at those positions (or the model's own logits there when ``head`` is None)."""
        positions, targets, sizes = [], [], []
        for s, start in zip(seqs, starts):
            positions.append(range(start - 1, len(s) - 1))  # position t predicts token t+1
            targets += s[start:]
            sizes.append(len(s) - start)
        logits = self._vocab_logits_at(seqs, positions, head)
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        return list(torch.split(picked, sizes))

    # --- losses ---
    def classification_loss(self, examples: Sequence[Example], fast: bool = True) -> torch.Tensor:
        """Cross-entropy over each example's candidate scores, averaged over the batch (float32)."""
        scores = self.candidate_scores(examples, fast=fast)
        losses = [F.cross_entropy(s[None], torch.tensor([ex.gold[0]], device=s.device)) for s, ex in zip(scores, examples)]
        return torch.stack(losses).mean()

    def lm_loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """Teacher-forced token cross-entropy on the target (gold candidate or answer), mean over tokens."""
        seqs, starts = [], []
        for ex in examples:
            full, start = self.encode(ex.prompt, ex.target)
            seqs.append(full)
            starts.append(start)
        token_lp = self._token_logprobs(seqs, starts, self._head())
        return -torch.cat(token_lp).mean()

    def predictions(self, examples: Sequence[Example], fast: bool = True) -> list[int]:
        return [int(s.argmax()) for s in self.candidate_scores(examples, fast=fast)]

    @torch.no_grad()
    def generate(self, examples: Sequence[Example], max_new_tokens: int = 50) -> list[str]:
        """Greedy answers, cut at the first newline (MeZO's QA decoding).

        A prefix-tuned model is decoded by :meth:`greedy_by_forward`, not ``generate``: with peft 0.21.2 and
        transformers 5.24, ``PeftModelForCausalLM.generate`` puts the prefix under ``past_key_values`` while
        transformers keeps its own (empty) cache under ``cache`` and ignores the other, so the answers were the
        base model's, as if the prefix had never been trained.
        """
        seqs = [self.encode(ex.prompt, "")[0][-max(1, self.max_length - max_new_tokens):] for ex in examples]
        if is_prefix_tuned(self.model):
            texts = self.tok.batch_decode(self.greedy_by_forward(seqs, max_new_tokens), skip_special_tokens=True)
            return [t.lstrip(" ").split("\n", 1)[0].strip() for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # left padding: every row's next token comes at the same column
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad_id,
                      stopping_criteria=_newline_stop(self.tok, width))
        eos = self.tok.eos_token_id
        if eos is not None:
            kwargs["eos_token_id"] = eos
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        texts = self.tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return [t.lstrip(" ").split("\n", 1)[0].strip() for t in texts]

    @torch.no_grad()
    def greedy_by_forward(self, seqs: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy new tokens after each sequence, by the model's own forward over the whole sequence at every
        step (no key/value cache; each row stops at EOS or once its new text holds a newline).

        Slower than ``generate`` by re-running the prompt at each step, but it is exactly the forward that
        training scores, prefix included, whatever the libraries do with caches in ``generate``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        head = self._head()
        eos = self.tok.eos_token_id
        new: list[list[int]] = [[] for _ in seqs]
        live = list(range(len(seqs)))
        for _ in range(max_new_tokens):
            if not live:
                break
            current = [list(seqs[i]) + new[i] for i in live]
            logits = self._vocab_logits_at(current, [[len(s) - 1] for s in current], head)
            still = []
            for i, token in zip(live, logits.argmax(-1).tolist()):
                new[i].append(token)
                if token != eos and "\n" not in self.tok.decode(new[i], skip_special_tokens=True):
                    still.append(i)
            live = still
        return new

    def nondiff_loss(self, examples: Sequence[Example], objective: str, max_new_tokens: int = 50) -> torch.Tensor:
        """Minus the batch's F1 (generation) or accuracy (candidates) of the model's own output.

        Not differentiable, but a forward-only optimizer only needs its value.
        """
        if objective == "f1":
            preds = self.generate(examples, max_new_tokens=max_new_tokens)
            value = sum(max_over_answers(f1_score, p, ex.answers) for p, ex in zip(preds, examples)) / len(examples)
        elif objective == "accuracy":
            preds = self.predictions(examples)
            value = sum(p in ex.gold for p, ex in zip(preds, examples)) / len(examples)
        else:
            raise ValueError(f"{objective!r} is not a non-differentiable objective")
        return torch.tensor(-value, dtype=torch.float32)

    def loss(self, examples: Sequence[Example], objective: str, max_new_tokens: int = 50) -> torch.Tensor:
        """The training loss of a batch for a resolved objective (ce, lm, f1 or accuracy)."""
        if not examples:
            raise ValueError("empty batch")
        if objective == "ce":
            return self.classification_loss(examples)
        if objective == "lm":
            return self.lm_loss(examples)
        return self.nondiff_loss(examples, objective, max_new_tokens=max_new_tokens)


def _newline_stop(tokenizer, prompt_width: int):
    """Stop each row once its generated text holds a newline (MeZO stops QA answers there)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class NewlineStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor(["\n" in t for t in texts], device=input_ids.device)

    return StoppingCriteriaList([NewlineStop()])


@torch.no_grad()
def full_logits_scores(model: nn.Module, tokenizer, examples: Sequence[Example], max_length: int = 256) -> list[torch.Tensor]:
    """Reference implementation: the model's own full-vocabulary logits at every position, then the
    mean log-prob of each candidate's tokens. Slow; used to prove the fast paths equal."""
    scorer = Scorer(model, tokenizer, max_length)
    out = []
    for ex in examples:
        scores = []
        for cand in ex.candidates:
            full, start = scorer.encode(ex.prompt, cand)
            ids = torch.tensor([full], device=scorer.device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            tok = torch.tensor(full[start:], device=ids.device)
            scores.append(logp[torch.arange(start - 1, len(full) - 1, device=ids.device), tok].mean())
        out.append(torch.stack(scores))
    return out

