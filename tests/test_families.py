"""Decoder-only families beyond Llama and OPT: tiny random-weight models of Mistral, Qwen2
(q/k/v biases), Qwen3 (q/k norms), Gemma 2 (head_dim not hidden/heads, tied embeddings,
soft-capping), Gemma 3, Phi-3 (fused qkv_proj and gate_up_proj) and GPT-2 (Conv1D layers as
Linears, fused c_attn, biases, learned positions), built from a config here.
Curvature against brute force, two LLM Surgeon shots, LoRA recovery, GPTQ and perplexity, the
layer-wise peers, coupled units with compaction, and zero-shot scoring on each; what the tool
cannot handle is refused in one line."""

import pytest
import torch

from helpers import (SMALL, VOCAB, curvature_file, direct_factors, family_model, random_windows,
                     removed_so_far)
from surgeon.curvature import estimate_kfac
from surgeon.curvature_store import open_curvature
from surgeon.evaluate import perplexity
from surgeon.lora import LoraSettings, lora_train
from surgeon.masks import weight_columns
from surgeon.quantize import Grid, quantize_model
from surgeon.errors import SurgeonError
from surgeon.models import check_architecture, decoder_linears
from surgeon.prune import prune_shot

FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2"]
ALL = ["llama", "opt", *FAMILIES]
COMPACTABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_kfac_equals_direct_computation(family):
    windows = random_windows(2, 16)
    factors, _ = estimate_kfac(family_model(family), windows, progress=False)
    expected = direct_factors(family_model(family), windows)
    assert list(factors) == list(expected) and factors
    for n, (A, G) in factors.items():
        A_ref, G_ref = expected[n]
        assert torch.allclose(A.double(), A_ref, rtol=1e-4, atol=1e-5 * A_ref.abs().max()), n
        assert torch.allclose(G.double(), G_ref, rtol=1e-4, atol=1e-5 * G_ref.abs().max()), n
    if family == "qwen2":  # q/k/v biases: the bias is A's last input column, always 1
        assert all(factors[n][0][-1, -1] == 1 for n in factors if "_proj" in n
                   and n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj"))


def zero_fraction(model, biases: bool = True) -> float:
    """Zeros among the decoder Linears' weights and biases (what LLM Surgeon's `target`
    counts; the peers prune weights only)."""
    params = [p for m in decoder_linears(model).values()
              for p in (m.weight, m.bias if biases else None) if p is not None]
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


@pytest.mark.parametrize("family", ALL)
def test_two_llm_surgeon_shots_then_the_peers(family, tmp_path):
    """Shot 2 reads the curvature of the shot-1 model; earlier zeros stay zero."""
    windows = random_windows(2, 16)
    model = family_model(family)
    removed = removed_so_far(model, tmp_path)
    for shot, fraction in ((1, 0.25), (2, 0.5)):
        path = curvature_file(model, tmp_path / f"shot-{shot}.h5", windows)
        masks = prune_shot(model, "llm-surgeon", fraction, removed, path, damp_g=1.0,
                           progress=False)
        assert all(bool((masks[n] | ~removed[n]).all()) for n in masks)  # earlier zeros kept
        removed = masks
    assert zero_fraction(model) == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        assert torch.isfinite(model(windows).logits).all()
    # recovery keeps the zeros; GPTQ 4 bit on the A factors keeps them on the code of zero
    zeros = {n: m.weight == 0 for n, m in decoder_linears(model).items()}
    losses = lora_train(model, windows, weight_columns(removed, model),
                        LoraSettings(rank=2, steps=2, lr=1e-3), progress=False)
    assert len(losses) == 2 and all(bool((m.weight[zeros[n]] == 0).all())
                                    for n, m in decoder_linears(model).items())
    path = curvature_file(model, tmp_path / "quantize.h5", windows)
    with open_curvature(path) as f:
        codes = quantize_model(model, "gptq", Grid(4, 32, True), weight_columns(removed, model),
                               f, progress=False)
    assert set(codes) == set(decoder_linears(model))
    assert zero_fraction(model) >= 0.5 - 0.01
    assert perplexity(model, windows, progress=False) < 10 * VOCAB  # finite, a real number
    for method in ("sparsegpt", "wanda"):
        peer = family_model(family)
        prune_shot(peer, method, 0.5, removed_so_far(peer, tmp_path), calibration=windows,
                   sequential=True, progress=False)
        if family in ("opt", "gpt2"):
            # a bias on every Linear: half of [W | b], the bias one more input column (SparseGPT
            # 0.5; Wanda, per row, 16 of the 33 entries of q/k/v/fc1: 0.487 OPT, 0.489 GPT-2)
            assert 0.48 < zero_fraction(peer) <= 0.5, method
        else:  # exactly half of the weights
            assert zero_fraction(peer, biases=False) == pytest.approx(0.5, abs=0.01), method


def test_unsupported_architectures_are_refused_in_one_line():
    import transformers as tf

    def refused(config) -> str:
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config)
        with pytest.raises(SurgeonError) as err:
            check_architecture(model)
        assert "\n" not in str(err.value)
        return str(err.value)

    mixtral = tf.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2)
    assert "mixture-of-experts" in refused(mixtral)
    mamba = tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                           state_size=4)
    assert "state-space" in refused(mamba)
    for family in ALL:
        check_architecture(family_model(family))  # supported (GPT-2 with its Conv1D as Linears)


def test_the_workflow_knows_which_families_compact():
    """The torch-free list the workflow checks `compact: true` against (surgeon.families) is
    compaction's own."""
    from surgeon.compact_models import COMPACT
    from surgeon.families import COMPACT_MODEL_TYPES

    assert set(COMPACT_MODEL_TYPES) == set(COMPACT)
    assert {family_model(f).config.model_type for f in COMPACTABLE} == set(COMPACT)


@pytest.mark.parametrize("family", COMPACTABLE)
def test_coupled_heads_and_channels_then_compaction(family, tmp_path):
    """Whole kv groups and MLP channels, 20% of the decoder parameters (biases included), then
    compaction: it removes every one of those zeros, the family's compacted model gives the
    masked model's logits (float64: to rounding; float32: within 1e-4 of their spread), and
    transformers loads the folder save_model writes (GPT-2's layers back in Conv1D layout)."""
    from transformers import AutoModelForCausalLM

    from surgeon.compact import compact_model
    from surgeon.models import save_model

    windows = random_windows(2, 16)
    model = family_model(family)
    path = curvature_file(model, tmp_path / "c.h5", windows)
    masks = prune_shot(model, "llm-surgeon", 0.2, removed_so_far(model, tmp_path), path,
                       progress=False, structure="structured", units="coupled",
                       calibration=windows)
    removed = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert removed == pytest.approx(0.2, abs=0.01)
    small, summary = compact_model(model)
    assert summary["zero_weights_left"] == 0 and summary["realised_fraction"] == 1.0
    assert summary["removed_weights"] == sum(int((m.weight == 0).sum())
                                             for m in decoder_linears(model).values())
    assert small.config.model_type == f"{model.config.model_type}-compact"
    with torch.no_grad():
        reference = model(windows).logits
        spread = reference.std()
        assert ((small(windows).logits - reference).abs().max() / spread) < 1e-4
        exact, _ = compact_model(model.double())
        assert torch.allclose(exact(windows).logits, model(windows).logits, rtol=0,
                              atol=1e-10 * float(spread))
    save_model(small, None, tmp_path / "compact")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compact")
    assert type(loaded) is type(small)
    with torch.no_grad():
        assert torch.equal(loaded(windows).logits, small(windows).logits)


def test_phi3_fused_groups_are_whole_heads_and_channels():
    """Phi-3's coupled units inside its fused Linears: zeroing kv group 0 (q rows of its query
    heads, its k and v rows inside qkv_proj, its o columns) and MLP channel 5 (gate row 5 and
    up row 64 + 5 inside gate_up_proj, down column 5) in both blocks gives the logits of a
    Phi-3 built with those heads and that channel sliced out."""
    import transformers as tf

    from helpers import SMALL, apply_structured_masks
    from surgeon.llm_pruner import ATTENTION, MLP, coupled_groups, group_masks

    model = family_model("phi3")
    chosen = [g for g in coupled_groups(model)
              if (g.kind, g.index) in ((ATTENTION, 0), (MLP, 5))]
    assert len(chosen) == 4
    masks = group_masks(model, chosen)
    small = tf.Phi3ForCausalLM(tf.Phi3Config(**{**SMALL, "intermediate_size": 63,
                                                "num_attention_heads": 2,
                                                "num_key_value_heads": 1, "head_dim": 8},
                                             tie_word_embeddings=False, pad_token_id=0)).eval()
    state = model.state_dict()
    for name, (rows, cols) in masks.items():
        state[f"{name}.weight"] = state[f"{name}.weight"][~rows][:, ~cols]
    small.load_state_dict(state)
    apply_structured_masks(model, masks)
    x = random_windows(2, 16)
    with torch.no_grad():
        assert torch.allclose(small(x).logits, model(x).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["phi3", "gpt2"])
@pytest.mark.parametrize("method", ["llm-pruner", "slimgpt"])
def test_structured_peers_on_fused_qkv(method, family, tmp_path):
    """LLM-Pruner and the SlimGPT-style baseline use the same fused-Linear units on Phi-3 and
    GPT-2; compaction then cuts every zero they leave, with the masked model's logits."""
    from surgeon.compact import compact_model

    windows = random_windows(2, 16)
    model = family_model(family).double()
    masks = prune_shot(model, method, 0.2, removed_so_far(model, tmp_path), calibration=windows,
                       progress=False, structure="structured")
    removed = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert removed == pytest.approx(0.2, abs=0.01)
    small, summary = compact_model(model)
    assert summary["zero_weights_left"] == 0
    with torch.no_grad():
        reference = model(windows).logits
        assert torch.allclose(small(windows).logits, reference, rtol=0,
                              atol=1e-10 * float(reference.std()))


def test_gpt2_folder_is_a_gpt2_checkpoint(tmp_path, tokenizer):
    """save_model writes GPT-2's layers back in Conv1D's (in, out) layout: transformers' own
    GPT2LMHeadModel loads the folder with the logits of the model in memory, and load_model
    (and the meta-device skeleton) gives back Linears of the weights saved."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    from surgeon.models import Conv1DLinear, load_model, model_skeleton, save_model

    model = family_model("gpt2")
    save_model(model, tokenizer, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [32, 96]
        assert f.get_slice("transformer.h.0.mlp.c_proj.weight").get_shape() == [128, 32]
    native = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(native) is GPT2LMHeadModel
    assert isinstance(native.transformer.h[0].attn.c_attn, Conv1D)
    loaded = load_model(tmp_path)
    x = random_windows(2, 16)
    with torch.no_grad():
        reference = model(x).logits
        assert torch.equal(native(x).logits, reference)
        assert torch.equal(loaded(x).logits, reference)
    layers, skeleton = decoder_linears(loaded), decoder_linears(model_skeleton(tmp_path))
    assert list(layers) == list(decoder_linears(model)) == list(skeleton)
    for name, layer in decoder_linears(model).items():
        assert isinstance(layers[name], Conv1DLinear)
        assert torch.equal(layers[name].weight, layer.weight)
        assert skeleton[name].weight.shape == layer.weight.shape


def test_gpt2_fused_groups_are_whole_heads_and_channels(tmp_path):
    """GPT-2's coupled units: zeroing head 0 of block 0 (its q, k and v rows of c_attn with
    their biases, its attn.c_proj columns) and MLP channel 5 of block 1 (c_fc row 5 and bias,
    mlp.c_proj column 5) computes what zeroing only their output columns computes (the rows
    are the head's and the channel's own); compaction cuts exactly those units, and the saved
    gpt2-compact folder, with each layer's own head count, gives the same logits."""
    from transformers import AutoModelForCausalLM

    from helpers import apply_structured_masks
    from surgeon.compact import compact_model
    from surgeon.llm_pruner import ATTENTION, MLP, coupled_groups, group_masks
    from surgeon.models import save_model

    model, outputs_only = family_model("gpt2").double(), family_model("gpt2").double()
    chosen = [g for g in coupled_groups(model)
              if (g.block, g.kind, g.index) in ((0, ATTENTION, 0), (1, MLP, 5))]
    masks = group_masks(model, chosen)
    assert [int(r.sum()) for r, _ in masks.values()] == [24, 0, 0, 0, 0, 0, 1, 0]
    apply_structured_masks(model, masks)
    blocks = outputs_only.transformer.h
    with torch.no_grad():
        blocks[0].attn.c_proj.weight[:, :8] = 0
        blocks[1].mlp.c_proj.weight[:, 5] = 0
    x = random_windows(2, 16)
    small, summary = compact_model(model)
    assert summary["attention_heads"] == summary["key_value_heads"] == [3, 4]
    assert summary["mlp_channels"] == [128, 127] and summary["zero_weights_left"] == 0
    save_model(small, None, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).double()
    assert loaded.config.model_type == "gpt2-compact"
    with torch.no_grad():
        reference = outputs_only(x).logits
        for m in (model, small, loaded):
            assert torch.allclose(m(x).logits, reference, rtol=0, atol=1e-12)


def test_gpt2_blocks_run_alone_see_the_causal_mask():
    """Sequential pruning runs each block on the captured inputs of block 0: GPT-2 passes its
    causal mask by position, which must come along (with eager attention a block without it
    attends to later tokens); the blocks run one by one reproduce the model's last hidden
    state."""
    from surgeon.layerwise import _run, block_inputs

    model = family_model("gpt2", attention="eager")
    x = random_windows(2, 16)
    inputs = block_inputs(model, x, "cpu")
    assert all(kwargs["attention_mask"] is not None for _, kwargs in inputs)
    with torch.no_grad():
        for block in model.transformer.h:
            inputs = [(_run(block, hidden, kwargs), kwargs) for hidden, kwargs in inputs]
        for (hidden, _), ids in zip(inputs, x):
            expected = model(ids[None], output_hidden_states=True).hidden_states[-1]
            assert torch.allclose(model.transformer.ln_f(hidden), expected, atol=1e-6)


def test_phi3_compaction_with_its_own_head_counts_per_layer(tmp_path):
    """Phi-3 compacted where block 0 lost kv group 0 and block 1 kept every head: each layer
    splits its fused qkv by its own head counts; logits equal before and after a save/load."""
    from transformers import AutoModelForCausalLM

    from helpers import apply_structured_masks
    from surgeon.compact import compact_model
    from surgeon.llm_pruner import ATTENTION, MLP, coupled_groups, group_masks

    model = family_model("phi3")
    chosen = [g for g in coupled_groups(model) if (g.block, g.kind, g.index) in
              ((0, ATTENTION, 0), (1, MLP, 3), (1, MLP, 9))]
    apply_structured_masks(model, group_masks(model, chosen))
    small, summary = compact_model(model)
    assert summary["attention_heads"] == [2, 4] and summary["key_value_heads"] == [1, 2]
    assert summary["mlp_channels"] == [64, 62] and summary["zero_weights_left"] == 0
    x = random_windows(2, 16)
    small.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        reference = model(x).logits
        assert torch.allclose(small(x).logits, reference, atol=1e-5)
        assert torch.allclose(loaded(x).logits, reference, atol=1e-5)


@pytest.mark.parametrize("family", ALL)
def test_zeroshot_scores_every_family(family, tokenizer):
    """lm-eval through the zeroshot stage's wrapper: per item the log-likelihood of each choice
    equals a direct computation on the family's model, and acc is its argmax."""
    import json

    from helpers import REPO, direct_loglikelihoods
    from surgeon.zeroshot import evaluate

    tasks = REPO / "resources" / "tasks"
    rows = [json.loads(line) for line in
            (tasks / "surgeon_python" / "surgeon_python.jsonl").read_text().splitlines()]
    model = family_model(family)
    summary, raw = evaluate(model, tokenizer, ["surgeon_python"], [str(tasks)], limit=4,
                            batch_size=4, log_samples=True)
    assert summary["tasks"]["surgeon_python"]["n"] == 4
    for s in raw["samples"]["surgeon_python"]:
        row = rows[s["doc_id"]]
        lls = direct_loglikelihoods(model, tokenizer, row["question"], row["choices"])
        assert [float(r[0]) for r in s["filtered_resps"]] == pytest.approx(lls, abs=1e-3)
        assert s["acc"] == float(max(range(len(lls)), key=lls.__getitem__) == row["label"])
