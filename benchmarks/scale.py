"""What one LLM Surgeon shot costs at 7-8B widths, measured on decoder blocks of that shape.

Builds `--blocks` random-weight Llama decoder blocks with the shapes of Llama-2-7B (hidden 4096,
MLP 11008, 32 heads) or Llama-3-8B (hidden 4096, MLP 14336, 8 KV heads), runs `--windows` windows
of `--seqlen` random tokens through them, and times each phase of a shot with the project's own
functions, with the peak memory it reached (resident set on the CPU, allocated memory on CUDA):

  forward+backward   one plain pass over the windows (the floor of a shot)
  curvature          K-FAC accumulation (curvature.estimate_kfac), in one or more passes
  inverses           the damped float64 inverses of every factor (linalg.spd_inverse)
  costs              element costs 0.5 w^2 / (Gi_rr Ai_cc) of every weight
  update             conjugate gradients of the joint update (obs.obs_element_prune) removing
                     half of every layer, run for exactly `--cg-iterations` iterations: the
                     time per iteration is what is measured; SmolLM2 needs 15-40 (130 at
                     damping_g 0.01), so the whole update is extrapolated at 20 and 40

Per block and extrapolated to the full model (32 blocks; the embeddings and the output layer,
whose vocabulary is cut to `--vocab` here, are not included), next to the memory that
workflow/rules/resources.smk asks a cluster for. Timings only, no assertions.

  python benchmarks/scale.py --shape llama-2-7b --out benchmarks/scale-llama-2-7b-cpu.json
  python benchmarks/scale.py --shape llama-3-8b --device cuda --windows 8
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from surgeon.curvature import estimate_kfac, window_loss
from surgeon.curvature_store import curvature_bytes
from surgeon.linalg import damped, spd_inverse
from surgeon.models import decoder_linears, resolve_device
from surgeon.obs import element_costs, obs_element_prune

SHAPES = {  # hidden, MLP, heads, KV heads, blocks of the full model
    "llama-2-7b": (4096, 11008, 32, 32, 32),
    "llama-3-8b": (4096, 14336, 32, 8, 32),
}
RESOURCES = Path(__file__).resolve().parents[1] / "workflow/rules/resources.smk"


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 resets the resident-set high-water mark VmHWM
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


@contextmanager
def phase(rows: list, name: str, device):
    peak_reset(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
    rows.append({"phase": name, "seconds": time.perf_counter() - start,
                 "peak_gb": peak_bytes(device) / 2**30})


def blocks_model(shape: str, blocks: int, vocab: int, seqlen: int, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, mlp, heads, kv, _ = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp,
                      num_hidden_layers=blocks, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=seqlen,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(cfg).eval()


def requested_memory_gb(shape: str) -> dict[str, float]:
    """What resources.smk asks SLURM for (mem_mb, attempt 1) for the full model's curvature and
    prune jobs, from its own formulas and the full model's fp32 size."""
    hidden, mlp, heads, kv, layers = SHAPES[shape]
    namespace: dict = {}
    exec(compile(RESOURCES.read_text(), str(RESOURCES), "exec"), namespace)
    per_block = 4 * hidden * hidden + 2 * hidden * hidden * kv // heads + 3 * hidden * mlp
    weights_mb = 4 * (layers * per_block + 2 * 32000 * hidden) / namespace["MB"]
    curvature_mb = 4 * layers * (8 * hidden * hidden + 3 * mlp * mlp) / namespace["MB"]
    asks = {}
    for kind in ("curvature", "prune"):
        fixed, per_weight, per_curvature = namespace["MEMORY"][kind]
        curv = per_curvature * curvature_mb
        if kind == "prune":
            curv = min(curv, namespace["PRUNE_INVERSE_CACHE_MB"])
        asks[kind] = (fixed + per_weight * weights_mb + curv) / 1000
    return asks


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b",
                   help="model whose decoder-block shapes are measured")
    p.add_argument("--blocks", type=int, default=1, help="decoder blocks built and measured")
    p.add_argument("--windows", type=int, default=2, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window")
    p.add_argument("--vocab", type=int, default=1024,
                   help="vocabulary of the random model (the output layer is not measured)")
    p.add_argument("--cg-iterations", type=int, default=3,
                   help="conjugate-gradient iterations timed per layer")
    p.add_argument("--factor-memory", type=float, default=0.0,
                   help="GiB of factors per curvature pass (0: one pass)")
    p.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    args = p.parse_args()

    device = resolve_device(args.device)
    model = blocks_model(args.shape, args.blocks, args.vocab, args.seqlen, device)
    windows = torch.randint(0, args.vocab, (args.windows, args.seqlen),
                            generator=torch.Generator().manual_seed(0))
    layers = decoder_linears(model)
    rows: list[dict] = []

    for p_ in model.parameters():
        p_.requires_grad_(False)
    with phase(rows, "forward+backward", device):
        for ids in windows:
            window_loss(model, ids[None].to(device), "empirical").backward()
    with phase(rows, "curvature", device):
        factors, run = estimate_kfac(model, windows, progress=False,
                                     max_factor_bytes=int(args.factor_memory * 2**30))
    inverses = {}
    with phase(rows, "inverses (float64)", device):
        last = None
        for name, (A, G) in factors.items():
            A, G = A.to(device, torch.float64), G.to(device, torch.float64)
            if last is None or not torch.equal(last[0], A):  # q/k/v, gate/up share A
                last = (A, spd_inverse(damped(A, 0.01)))
            inverses[name] = (spd_inverse(damped(G, 1.0)).float(), last[1].float())
    del factors
    costs = {}
    with phase(rows, "costs", device):
        for name, layer in layers.items():
            Gi, Ai = inverses[name]
            costs[name] = element_costs(layer.weight.float(), Gi.diagonal(), Ai.diagonal())
    with phase(rows, f"update ({args.cg_iterations} CG iterations)", device):
        for name, layer in layers.items():
            cost = costs[name]
            remove = cost <= cost.flatten().kthvalue(cost.numel() // 2).values
            Gi, Ai = inverses[name]
            obs_element_prune(layer.weight.float(), Gi, Ai, remove, tol=0.0,
                              max_iter=args.cg_iterations)

    full_blocks = SHAPES[args.shape][4]
    per_iteration = rows[-1]["seconds"] / args.cg_iterations
    for iterations in (20, 40):
        rows.append({"phase": f"update at {iterations} iterations (extrapolated)",
                     "seconds": per_iteration * iterations, "peak_gb": rows[-1]["peak_gb"]})
    for row in rows:
        row["seconds_per_block"] = row["seconds"] / args.blocks
        row["seconds_full_model"] = row["seconds_per_block"] * full_blocks
    factor_gb = curvature_bytes(layers) / args.blocks * full_blocks / 2**30
    report = {"shape": args.shape, "blocks": args.blocks, "windows": args.windows,
              "seqlen": args.seqlen, "curvature_passes": run.passes, "device": str(device),
              "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "factors_full_model_gb": factor_gb,
              "resources_smk_asks_gb": requested_memory_gb(args.shape), "rows": rows}
    print(f"{args.shape}: {args.blocks} block(s), {args.windows} x {args.seqlen} tokens, "
          f"{device}, {report['threads']} threads; factors of the full model "
          f"{factor_gb:.1f} GiB (fp32)")
    print(f"{'phase':44s} {'s/block':>9s} {'s full model':>13s} {'peak GiB':>9s}")
    for row in rows:
        print(f"{row['phase']:44s} {row['seconds_per_block']:9.1f} "
              f"{row['seconds_full_model']:13.0f} {row['peak_gb']:9.2f}")
    print("resources.smk asks (GB): " + ", ".join(
        f"{k} {v:.0f}" for k, v in report["resources_smk_asks_gb"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
