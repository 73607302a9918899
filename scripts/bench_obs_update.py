"""Measure the element OBS update of one decoder block: seconds and the quadratic loss it adds.

For every Linear of block `--block`, removes the `--fraction` cheapest elements by OBS cost and
runs the joint update (conjugate gradients, obs.obs_element_prune) for each CG tolerance and
dtype given; prints seconds and the K-FAC loss model 0.5 tr(dW^T G dW A) (lower is better).
Usage:
  python scripts/bench_obs_update.py MODEL_DIR CURVATURE_H5 --block 5 --fraction 0.5
"""

import argparse
import time

import torch

from surgeon import obs
from surgeon.curvature_store import open_curvature, read_factors
from surgeon.models import load_model
from surgeon.prune import decoder_weights


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("curvature")
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.167)
    p.add_argument("--tols", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-6])
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    args = p.parse_args()
    weights = decoder_weights(load_model(args.model))
    names = [n for n in weights if f".{args.block}." in n]
    print("tol     dtype    seconds  loss_model")
    with open_curvature(args.curvature) as f:
        layers = []
        for n in names:
            A, G = read_factors(f, n)
            Gi, Ai = obs.kfac_inverses(G, A, torch.ones(len(G), dtype=torch.bool),
                                       torch.ones(len(A), dtype=torch.bool), 0.1, 0.01)
            cost = obs.element_costs(weights[n], Gi.diagonal(), Ai.diagonal())
            remove = cost <= cost.flatten().kthvalue(int(args.fraction * cost.numel())).values
            layers.append((weights[n], G.double(), A.double(), Gi, Ai, remove))
    for dtype in args.dtypes:
        for tol in args.tols:
            start, loss = time.time(), 0.0
            for W, G, A, Gi, Ai, remove in layers:
                dt = getattr(torch, dtype)
                new = obs.obs_element_prune(W.to(dt), Gi.to(dt), Ai.to(dt), remove, tol=tol)
                dW = new.double() - W.double()
                loss += 0.5 * torch.trace(dW.T @ G @ dW @ A).item()
            print(f"{tol:<7g} {dtype:7s}  {time.time() - start:7.2f}  {loss:.5e}")


if __name__ == "__main__":
    main()
