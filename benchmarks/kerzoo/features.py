"""Step 1 of the KerZOO benchmark: run the embedded model once and cache what the head needs.

SmolLM2-135M-Instruct (zotune's embedded model, fp32, frozen) reads each movie-review prompt of zotune's
``mr`` task ("<sentence> It was" -> " terrible" / " great"); we keep the final hidden state at the last
prompt token and the two label words' rows of the (tied) output embedding. The classification logits of
the untouched model are exactly ``h @ W_cand.T`` (zotune.llm.objectives' fast path), so a head initialised
from ``W_cand`` starts at the zero-shot model.

The cache goes to ``$ZOTUNE_CACHE/bench-kerzoo/features-<n_train>-<n_test>-<max_length>.pt`` (outside git).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zotune.llm.data import cache_dir
from zotune.llm.models import load_model
from zotune.llm.objectives import Scorer
from zotune.llm.tasks import get_task, sample_splits


def feature_path(n_train: int, n_test: int, max_length: int) -> Path:
    return cache_dir() / "bench-kerzoo" / f"features-{n_train}-{n_test}-{max_length}.pt"


@torch.no_grad()
def extract(n_train: int, n_test: int, max_length: int, batch: int = 32, seed: int = 0) -> Path:
    path = feature_path(n_train, n_test, max_length)
    if path.is_file():
        return path
    start = time.perf_counter()
    loaded = load_model("smollm2-135m", dtype="float32")
    model = loaded.model.eval()
    scorer = Scorer(model, loaded.tokenizer, max_length)
    splits = sample_splits(get_task("mr"), n_train, 0, n_test, seed=seed)
    rows = model.get_output_embeddings().weight
    out: dict[str, torch.Tensor] = {}
    cand_ids = None
    odd = 0  # examples whose label words are not plain single tokens after the prompt
    for name, examples in (("train", splits.train), ("test", splits.test)):
        feats, labels = [], []
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            seqs = [scorer.encode(ex.prompt, "")[0] for ex in chunk]
            hidden = scorer.hidden_states(seqs)
            last = torch.tensor([len(s) - 1 for s in seqs])
            feats.append(hidden[torch.arange(len(seqs)), last].float())
            labels += [ex.gold[0] for ex in chunk]
            for ex in chunk:
                ids = scorer.single_token_candidates(ex)
                if ids is None:  # the label word merges with the prompt's end: keep the shared ids
                    odd += 1
                elif cand_ids is None:
                    cand_ids = ids
                elif ids != cand_ids:
                    raise RuntimeError(f"label word ids differ between examples: {ids} vs {cand_ids}")
            print(f"{name}: {i + len(chunk)}/{len(examples)} ({time.perf_counter() - start:.0f} s)", flush=True)
        out[f"h_{name}"] = torch.cat(feats)
        out[f"y_{name}"] = torch.tensor(labels)
    print(f"{odd} examples tokenise a label word together with the prompt; they use the shared ids")
    out["w_cand"] = rows[torch.tensor(cand_ids)].detach().float().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    print(f"saved {path} in {time.perf_counter() - start:.0f} s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extract(args.n_train, args.n_test, args.max_length)


if __name__ == "__main__":
    main()
