"""Tiny random-weight models (Llama and OPT) and a tiny tokenizer, built here: no downloads."""

from __future__ import annotations

import pytest
import torch

VOCAB = 320

# Test modules that run the workflow end to end, and others that train models, start processes
# or write exports: `make test-fast` (pytest -m "not slow") leaves both out; `make test` runs all.
E2E_MODULES = {"test_workflow.py", "test_resume.py", "test_hpc_profile.py", "test_slurm.py"}
SLOW_MODULES = {"test_recover.py", "test_zeroshot.py", "test_distill.py", "test_qat.py",
                "test_gguf_export.py", "test_ct_export.py", "test_lora.py", "test_cli.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if name in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if name in E2E_MODULES | SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def tiny_tokenizer():
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


def tiny_model(arch: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, tie_word_embeddings=False)
        return LlamaForCausalLM(cfg).eval()
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32)
    return OPTForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session", params=["llama", "opt"])
def tiny_model_dir(request, tmp_path_factory, tokenizer):
    """A saved tiny model folder of each architecture."""
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    tiny_model(request.param).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_windows(n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))
