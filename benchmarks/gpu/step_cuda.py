"""One ZO step on a CUDA device, against its own forward passes, and the host-to-device copies it makes.

The model has SmolLM2-135M's shape (30 layers, hidden 576, vocabulary 49152) with random weights built from
its config, because the GPU machine has no network to fetch the real weights; a step's cost does not depend
on the weights' values. For each sampler set-up it reports, in one run:

* ``forward_ms``: one forward of the batch (median of ``--rounds``, CUDA-synchronised);
* ``step_ms`` and ``step / 2 forwards``: a MeZO step (two probes and the fused restore-and-update);
* ``host_to_device_copies``: memcpy HtoD events the torch profiler saw in one step (the batch is on the GPU
  already, so every copy is the optimizer's).

Set-ups: ``gaussian`` (the default Threefry stream, scalars staged once per pass), ``gaussian, per-call
scalars`` (the same stream with ``stage="never"``: two small copies per tensor, the code before staging)
and ``gaussian-torch`` (MeZO's ``torch.Generator`` draw).

    python benchmarks/gpu/step_cuda.py --out benchmarks/gpu/results/step_cuda.<date>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch


def smollm2_shaped(device: torch.device, layers: int) -> torch.nn.Module:
    import transformers as tr

    config = tr.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                            tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = tr.LlamaForCausalLM(config).to(device)
    model.eval()
    return model


def timed(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def host_to_device_copies(fn: Any) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if "HtoD" in event.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import zotune
    from zotune.core.samplers import ThreefrySampler

    device = torch.device("cuda")
    model = smollm2_shaped(device, args.layers)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids = torch.randint(0, 49152, (args.batch, args.length), device=device)

    @torch.no_grad()
    def closure() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    setups = {
        "gaussian": lambda: "gaussian",
        "gaussian, per-call scalars": lambda: ThreefrySampler("gaussian", stage="never"),
        "gaussian-torch": lambda: "gaussian-torch",
    }
    results: dict[str, Any] = {}
    for _ in range(2):
        closure()
    forward_ms = timed(closure, args.rounds)
    for name, make in setups.items():
        opt = zotune.mezo(params, lr=1e-7, eps=1e-3, sampler=make())
        opt.step(closure)  # compiles
        opt.step(closure)
        step_ms = timed(lambda: opt.step(closure), args.rounds)
        copies = host_to_device_copies(lambda: opt.step(closure))
        results[name] = {"step_ms": round(step_ms, 3), "step / 2 forwards": round(step_ms / (2 * forward_ms), 3),
                         "host_to_device_copies": copies}
        print(f"{name:28s} step {step_ms:8.2f} ms  = {step_ms / (2 * forward_ms):.3f} x two forwards, "
              f"{copies} HtoD copies per step", flush=True)
    report = {
        "command": "python benchmarks/gpu/step_cuda.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "model": f"SmolLM2-135M-shaped llama, {args.layers} layers, random weights",
        "trainable_tensors": len(params), "trainable_params": sum(p.numel() for _, p in params),
        "batch": args.batch, "length": args.length, "forward_ms": round(forward_ms, 3), "setups": results,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
