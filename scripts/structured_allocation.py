"""Experiment: how much of the SlimGPT-style baseline's lead over structured LLM Surgeon is its
removal (layer-wise greedy OBS on the inputs of the already-pruned blocks) and how much its
allocation (LLM-Pruner's uniform counts per block)?

Runs the SlimGPT-style removal with LLM Surgeon's allocation instead: the units one global
K-FAC threshold removes from the dense model (prune.coupled_selection, one shot) are counted
per block and kind, and those counts replace the uniform ones. Prints the counts and one JSON
line with the perplexity on the evaluation and out-of-domain windows (docs/comparison.md).

  python scripts/structured_allocation.py --fraction 0.2 --damping-g 10
"""

import argparse
import json
from collections import Counter

import torch

from surgeon.data import load_windows
from surgeon.evaluate import perplexity
from surgeon.layerwise import prune_sequentially
from surgeon.llm_pruner import uniform_counts
from surgeon.models import load_model
from surgeon.prune import coupled_selection, decoder_weights, element_masks
from surgeon.slimgpt import slimgpt_masks


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/smollm2-135m")
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--damping-g", type=float, default=10.0)
    p.add_argument("--damping-a", type=float, default=0.01)
    args = p.parse_args()
    R = args.results
    model = load_model(f"{R}/dense/model")
    groups, chosen, _ = coupled_selection(model, decoder_weights(model), args.fraction,
                                          f"{R}/dense/curvature.h5", args.damping_g,
                                          args.damping_a, progress=False)
    counts = Counter((g.block, g.kind) for g, take in zip(groups, chosen.tolist()) if take)
    print("uniform counts per block:", uniform_counts(model, groups, args.fraction))
    print("LLM Surgeon's counts:", dict(sorted(counts.items())))
    windows = load_windows(f"{R}/data/calibration.safetensors")[0]
    removal = slimgpt_masks(
        model, args.fraction,
        lambda prune_block: prune_sequentially(model, windows, prune_block, False),
        args.damping_a, block_counts=counts)
    masks = element_masks(model, removal)
    removed = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    with torch.no_grad():
        ppl = perplexity(model, load_windows(f"{R}/data/evaluation.safetensors")[0], progress=False)
        ood = perplexity(model, load_windows(f"{R}/data/ood.safetensors")[0], progress=False)
    print(json.dumps({"fraction": args.fraction, "damping_g": args.damping_g,
                      "removed_share": removed / total, "ppl": ppl, "ppl_ood": ood}))


if __name__ == "__main__":
    main()
