"""Plain helpers shared by the test modules (no fixtures: those live in conftest.py).

Tiny random-weight models (Llama and OPT) and a tiny tokenizer, built here: no downloads;
small OBS problems solved by brute force; and the Snakemake runner with the tiny workflow config
(.test/config/config.yaml).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

VOCAB = 320
"""Vocabulary size of the tiny tokenizer and the tiny models."""

REPO = Path(__file__).resolve().parents[1]
"""The repository root (holds the Snakefile)."""

TINY_CONFIG = REPO / ".test" / "config" / "config.yaml"
"""The tiny workflow config, with placeholders that tiny_config fills in."""

MODEL_DIR = "<tiny-model-dir>"
"""Placeholder in TINY_CONFIG for the folder of the tiny model a test saved."""

D = torch.float64
"""The dtype of the brute-force OBS problems."""


def tiny_tokenizer():
    """A byte-level BPE tokenizer of VOCAB tokens trained on Python's pydoc topics."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_model(arch: str, seed: int = 0, layers: int = 2):
    """A random-weight Llama or OPT ("llama" or "opt") of `layers` blocks, hidden size 32, in
    eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, tie_word_embeddings=False)
        return LlamaForCausalLM(cfg).eval()
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                    num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32)
    return OPTForCausalLM(cfg).eval()


SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def family_model(family: str, seed: int = 0, attention: str | None = None):
    """A tiny random-weight model of a decoder family: llama, opt, mistral, qwen2 (q/k/v
    biases), qwen3 (q/k norms, head_dim 8), gemma2 (head_dim 16, tied, soft-capping), gemma3
    (head_dim 16, tied, q/k norms, sliding and global layers), phi3 (fused projections) or
    gpt2 (Conv1D layers, fused c_attn, biases everywhere, learned positions, tied; 1024
    positions and an MLP 4 x 32 wide, what transformers' GGUF reader builds a GPT-2 with, as it
    reads neither context_length nor feed_forward_length; biases and LayerNorms random, as
    in a trained GPT-2: transformers starts them at 0 and 1, zero biases would count as removed
    weights and hide a bias that an export or a slice drops), in eval mode and as load_model
    gives it (Conv1D as Linears). `attention` names transformers' attention implementation
    (default: its own choice, sdpa; not for llama and opt)."""
    import transformers as tf

    from surgeon.models import linears_for_conv1d

    if family in ("llama", "opt"):
        return tiny_model(family, seed)
    configs = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=1024, bos_token_id=0, eos_token_id=0),
        "mistral": lambda: tf.MistralConfig(**SMALL, tie_word_embeddings=False),
        # rows past the tokenizer's ids, as Qwen2's embedding has (its tokenizer class adds
        # <|endoftext|> to a generic vocabulary: id VOCAB)
        "qwen2": lambda: tf.Qwen2Config(**{**SMALL, "vocab_size": VOCAB + 16},
                                        tie_word_embeddings=False),
        "qwen3": lambda: tf.Qwen3Config(**SMALL, head_dim=8, tie_word_embeddings=False),
        # query_pre_attn_scalar = head_dim: the query scale llama.cpp's gemma computes
        "gemma2": lambda: tf.Gemma2Config(**SMALL, head_dim=16, tie_word_embeddings=True,
                                          query_pre_attn_scalar=16,
                                          attn_logit_softcapping=50.0,
                                          final_logit_softcapping=30.0),
        "gemma3": lambda: tf.Gemma3TextConfig(**SMALL, head_dim=16, tie_word_embeddings=True,
                                              query_pre_attn_scalar=16, sliding_window=8),
        "phi3": lambda: tf.Phi3Config(**SMALL, tie_word_embeddings=False, pad_token_id=0),
    }
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(configs[family](), attn_implementation=attention)
    if family == "gpt2":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.02)
                elif ".ln_" in name:
                    p.normal_(1, 0.1)
    return linears_for_conv1d(model.eval())


def random_windows(n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`n` windows of `seqlen` random token ids below VOCAB (seeded)."""
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def spd(n, seed):
    """A random, well-conditioned n x n symmetric positive definite float64 matrix."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3 * n, generator=g, dtype=D)
    return X @ X.T / (3 * n) + 0.1 * torch.eye(n, dtype=D)


def brute_force_removal(W, H, remove):
    """argmin 0.5 dw^T H dw  s.t. (w + dw)_Q = 0, solved as a KKT system on vec(W) row-major."""
    w = W.reshape(-1)
    q = torch.nonzero(remove.reshape(-1)).flatten()
    E = torch.zeros(len(q), w.numel(), dtype=D)
    E[torch.arange(len(q)), q] = 1.0
    n, m = w.numel(), len(q)
    K = torch.zeros(n + m, n + m, dtype=D)
    K[:n, :n], K[:n, n:], K[n:, :n] = H, E.T, E
    rhs = torch.cat([torch.zeros(n, dtype=D), -w[q]])
    dw = torch.linalg.solve(K, rhs)[:n]
    return (w + dw).reshape(W.shape), 0.5 * dw @ H @ dw


def setup(R=5, C=6, seed=0):
    """A random R x C float64 weight W with SPD Kronecker factors G (R x R) and A (C x C)."""
    G, A = spd(R, seed), spd(C, seed + 1)
    W = torch.randn(R, C, generator=torch.Generator().manual_seed(seed + 2), dtype=D)
    return W, G, A


def prune_randomly(model, fraction=0.5, seed=0):
    """Zero a random fraction of every decoder Linear; the masks (True = removed)."""
    from surgeon.models import decoder_linears

    g = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for name, layer in decoder_linears(model).items():
            masks[name] = torch.rand(layer.weight.shape, generator=g) < fraction
            layer.weight[masks[name]] = 0
    return masks


def curvature_file(model, path, windows):
    """Estimate the model's K-FAC curvature on `windows`, write it to `path`, freeze the model."""
    from surgeon.curvature import estimate_kfac, layer_metadata
    from surgeon.curvature_store import write_curvature

    factors, acc = estimate_kfac(model, windows, progress=False)
    write_curvature(path, factors, {"fisher": "empirical"}, layer_metadata(acc))
    for p in model.parameters():
        p.requires_grad_(False)
    return path


def removed_so_far(model, tmp_path):
    """The removal masks of a model with no saved mask: its decoder weights' exact zeros."""
    from surgeon.masks import load_mask
    from surgeon.prune import decoder_weights

    return load_mask(tmp_path / "none", decoder_weights(model))


def workflow_env() -> dict:
    """The environment of the tests' Snakemake runs: offline, and rules calling `surgeon` find
    the test interpreter's (its bin folder first on PATH, as in `make run`), served by the
    tests' fork server (tests/forkserver.py) when it runs."""
    import tempfile

    import forkserver

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path}
    served = forkserver.start(Path(tempfile.gettempdir()) / f"surgeon-forkserver-{os.getpid()}",
                              env)
    if served:
        env["PATH"] = f"{served['bin']}{os.pathsep}{path}"
        env[forkserver.SOCKET_VAR] = served[forkserver.SOCKET_VAR]
    return env


def snakemake(workdir, *args):
    """Run the repository's Snakefile in `workdir` (2 cores, offline); the CompletedProcess."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=workflow_env(),
                          timeout=1200)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule name -> job count (empty: nothing to do)."""
    if "Job stats:" not in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    rows = (line.split() for line in table.splitlines()[3:])
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def _fill(node, values: dict):
    """`node` with every string equal to a key of `values` replaced by its value (recursive)."""
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    return values.get(node, node) if isinstance(node, str) else node


def tiny_config(model_dir):
    """The tiny workflow config (.test/config/config.yaml) with the model read from `model_dir`."""
    return _fill(yaml.safe_load(TINY_CONFIG.read_text()), {MODEL_DIR: str(model_dir)})


def is_nm(W: torch.Tensor, weight_cols: int, n: int = 2, m: int = 4) -> bool:
    """True when every block of m weight columns holds at least n zeros."""
    from surgeon.semi_structured import blocks

    return bool(((blocks(W, weight_cols, m) == 0).sum(-1) >= n).all())


def evaluate_loss(model, windows: torch.Tensor, batch_size: int = 1) -> float:
    """Mean over windows of the mean next-token cross-entropy (the log of `perplexity`)."""
    import math

    from surgeon.evaluate import perplexity

    return math.log(perplexity(model, windows, batch_size=batch_size, progress=False))


def removed_params(model, masks) -> int:
    """Decoder-Linear parameters zeroed by row/column masks (overlap of a row and column once)."""
    from surgeon.llm_pruner import _removed
    from surgeon.models import decoder_linears

    layers = decoder_linears(model)
    return sum(_removed(int(rows.sum()), int(cols.sum()), layers[name])
               for name, (rows, cols) in masks.items())


def apply_structured_masks(model, masks) -> None:
    """Zero the removed rows (weights and bias entries) and removed columns, in place."""
    from surgeon.models import decoder_linears

    layers = decoder_linears(model)
    with torch.no_grad():
        for name, (rows, cols) in masks.items():
            layer = layers[name]
            rows, cols = rows.to(layer.weight.device), cols.to(layer.weight.device)
            layer.weight[rows] = 0
            layer.weight[:, cols] = 0
            if layer.bias is not None:
                layer.bias[rows] = 0


def direct_factors(model, windows):
    """K-FAC means by brute force: store every decoder Linear's inputs and outputs, backprop
    the summed NLL, form A = mean(a a^T) and G = mean(g g^T) in float64."""
    import torch.nn.functional as F

    from surgeon.models import decoder_linears

    layers = decoder_linears(model)
    inputs, outputs = {n: [] for n in layers}, {n: [] for n in layers}
    handles = []
    for n, layer in layers.items():
        def hook(mod, inp, out, n=n):
            out.retain_grad()
            inputs[n].append(inp[0].detach())
            outputs[n].append(out)
        handles.append(layer.register_forward_hook(hook))
    for p in model.parameters():
        p.requires_grad_(False)
    for ids in windows:
        ids = ids[None]
        emb = model.get_input_embeddings()(ids).requires_grad_(True)
        logits = model(inputs_embeds=emb).logits[:, :-1]
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                        reduction="sum").backward()
    for h in handles:
        h.remove()
    result = {}
    for n, layer in layers.items():
        a = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[n]]).double()
        if layer.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
        g = torch.cat([y.grad.reshape(-1, y.shape[-1]) for y in outputs[n]]).double()
        result[n] = (a.T @ a / len(a), g.T @ g / len(g))
    return result


@torch.no_grad()
def direct_loglikelihoods(model, tokenizer, question, choices):
    """log P(" " + choice | "Question: ...\\nAnswer:") summed over the choice's tokens, from one
    forward pass of context + choice (the continuation = the tokens after the context's)."""
    context = f"Question: {question}\nAnswer:"
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    scores = []
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
        cont = whole[len(ctx):]
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
        positions = torch.arange(len(ctx) - 1, len(whole) - 1)
        scores.append(logp[positions, torch.tensor(cont)].sum().item())
    return scores
