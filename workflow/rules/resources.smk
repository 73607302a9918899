# Memory per job from the size of the model it reads, so a 7B preset asks a cluster for what it
# needs and a 135M run does not ask for 80 GB. Runtime, threads/CPUs and GPUs per rule are in
# profiles/slurm/config.yaml; any value can be overridden with --set-resources RULE:mem_mb=N.
import json
from pathlib import Path

MB = 1_000_000  # Snakemake's mem_mb is in megabytes

# kind: (fixed MB, x the model's fp32 weights, x its curvature), sized from the peak RSS
# measured on SmolLM2-135M (538 MB of weights, 1.1 GB of curvature; benchmarks/*.tsv), in
# brackets, with 10-60% to spare. A retry (attempt 2, 3) asks for attempt times as much.
MEMORY = {
    "data": (1000, 0, 0),  # calibrate, recovery_windows [408]
    "curvature": (1000, 1, 1.5),  # model, running sums and the means written out [2711]
    "prune": (1500, 4, 2),  # model, costs, new weights, float64 inverses [5418]
    "recover": (2000, 5, 0),  # model, LoRA, activations, merged copy [4085]
    "evaluate": (1000, 1.2, 0),  # [1241]
    "zeroshot": (1500, 1.2, 0),  # lm-eval, a batch of logits + log-softmax [1698]
    "quantize": (1000, 2, 0),  # [1552]
    "compact": (1000, 2, 0),  # [1726]
    "export": (1000, 1, 0),  # gguf, compressed-tensors [951]
    "report": (500, 0, 0),  # eval JSONs and a plot [11]
}
# prune keeps its float64 inverses only while they fit in 6 GB
PRUNE_INVERSE_CACHE_MB = 6000
IMPORT_FROM_HUB_MB = 40000  # a hub id's size is unknown before download: enough for 7B


def weights_mb(model_dir):
    """Size of a model folder's weights (model*.safetensors, fp32 as the stages write them).

    Raises FileNotFoundError (named after the input) while the folder does not exist yet:
    Snakemake then evaluates the resource again once the job's inputs are there.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(2, "model folder not built yet", str(model_dir))
    return sum(f.stat().st_size for f in folder.glob("model*.safetensors")) / MB


def curvature_mb(model_dir):
    """Size of the K-FAC factors of a model's decoder Linears, from its config.json.

    Per layer: A of the attention input, o_proj input and MLP input (h x h each), of the down
    projection (i x i); G of q/k/v/o (4 h x h), of the MLP's up projections (one per up/gate),
    of the down projection (h x h). Unknown configs: twice the weights.
    """
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        i = cfg.get("intermediate_size") or cfg["ffn_dim"]
    except (OSError, KeyError, ValueError):
        return 2 * weights_mb(model_dir)
    ups = 2 if "intermediate_size" in cfg else 1  # gate + up (Llama) or fc1 (OPT)
    floats = layers * (8 * h * h + (1 + ups) * i * i)
    return 4 * floats / MB


def import_mb(source):
    """The import stage holds the model in fp32 (twice for a GGUF source, which is copied)."""
    path = Path(source)
    if source.startswith("embedded:"):
        # embedded models are small by design (SmolLM2-135M: 510 MB measured)
        return 2000
    if path.is_dir():
        stored = sum(f.stat().st_size for f in path.glob("*.safetensors")) / MB
        try:
            dtype = json.loads((path / "config.json").read_text()).get("torch_dtype")
        except (OSError, ValueError):
            dtype = None
        to_fp32 = 2 if dtype in ("float16", "bfloat16") else 1
        return 1000 + 2 * to_fp32 * stored
    if path.is_file():  # .gguf: quantized blocks, up to 8x larger in fp32, then a copy
        return 1000 + 16 * path.stat().st_size / MB
    return IMPORT_FROM_HUB_MB


def model_input(input):
    """The model folder a job reads: input.model, or the only input of the export rules."""
    if "model" in input.keys():
        return input.model
    return input[0] if len(input) else None


def memory(kind):
    """mem_mb input function for rules of one kind (a key of MEMORY)."""
    fixed, per_weight, per_curvature = MEMORY[kind]

    def mem_mb(wildcards, input, attempt):
        model = model_input(input) if per_weight or per_curvature else None
        need = fixed
        if model is not None:
            need += per_weight * weights_mb(model)
            if per_curvature and (kind != "prune" or "curvature" in input.keys()):
                curv = per_curvature * curvature_mb(model)
                if kind == "prune":
                    curv = min(curv, PRUNE_INVERSE_CACHE_MB)
                need += curv
        return int(need) * attempt

    return mem_mb


def import_memory(wildcards, attempt):
    return int(import_mb(config["model"]["source"])) * attempt
