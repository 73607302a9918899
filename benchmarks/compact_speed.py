"""Speed of compacted models against the dense one, measured side by side in one process.

The evaluate stage times each model in its own job (one median of 3 runs of 64 tokens), so two
models' figures can differ by what else the machine did at the time. Here every model is
loaded once and timed in turns (round r times model 1, 2, ..., then round r+1), so a slow
moment of the machine hits all of them alike. Two figures per model: greedy generation
(tokens/s, batch 1, KV cache: what a chat user sees) and the prefill of one whole window
(tokens/s of a forward pass over `--window` tokens: matrix products, where fewer parameters
show most directly).

  python benchmarks/compact_speed.py dense=results/smollm2-135m/dense/model \
      surgeon-20=results/smollm2-135m/llm-surgeon-structured-20/compact/model ...
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from surgeon.data import load_windows
from surgeon.evaluate import parameter_counts, tokens_per_second
from surgeon.models import load_model


@torch.no_grad()
def prefill_tokens_per_second(model, window: torch.Tensor) -> float:
    """Tokens/s of one forward pass over `window` (1-D ids), no cache kept."""
    ids = window[None]
    start = time.perf_counter()
    model(ids, use_cache=False)
    return len(window) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", help="label=model folder")
    p.add_argument("--evaluation", default="results/smollm2-135m/data/evaluation.safetensors")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--window", type=int, default=512, help="tokens of the prefill pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    labels, models = [], []
    for spec in args.models:
        label, sep, folder = spec.partition("=")
        if not sep:
            p.error(f"{spec!r}: give label=model folder")
        labels.append(label)
        models.append(load_model(folder, "cpu"))
    window = load_windows(args.evaluation)[0][0, : args.window]
    prompt = window[: args.prompt_tokens]

    generate = {label: [] for label in labels}
    prefill = {label: [] for label in labels}
    for model in models:  # warm-up: first calls allocate
        prefill_tokens_per_second(model, window)
    for _ in range(args.rounds):
        for label, model in zip(labels, models):
            generate[label].append(tokens_per_second(model, prompt, args.new_tokens, repeats=1))
            prefill[label].append(prefill_tokens_per_second(model, window))

    base = labels[0]
    print(f"| model | params | generate tokens/s | x {base} | prefill tokens/s | x {base} |")
    print("|---|---|---|---|---|---|")
    g0, f0 = statistics.median(generate[base]), statistics.median(prefill[base])
    for label, model in zip(labels, models):
        g, f = statistics.median(generate[label]), statistics.median(prefill[label])
        params = parameter_counts(model)["params"]
        print(f"| {label} | {params:,} | {g:.2f} | {g / g0:.3f} | {f:.0f} | {f / f0:.3f} |")
    print(f"(median of {args.rounds} rounds; {torch.get_num_threads()} threads; generation: "
          f"{args.new_tokens} tokens after {args.prompt_tokens}; prefill: {len(window)} tokens)")


if __name__ == "__main__":
    main()
