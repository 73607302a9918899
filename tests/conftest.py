"""Fixtures (the tiny tokenizer and saved tiny models) and the slow/e2e markers; the plain
helpers they use, which test modules import too, are in helpers.py."""

from __future__ import annotations

import pytest

from helpers import tiny_model, tiny_tokenizer

# Test modules that run the workflow end to end, and others that train models, start processes
# or write exports: `make test-fast` (pytest -m "not slow") leaves both out; `make test` runs all.
E2E_MODULES = {"test_workflow.py", "test_resume.py", "test_hpc_profile.py", "test_slurm.py"}
SLOW_MODULES = {"test_recover.py", "test_zeroshot.py", "test_distill.py", "test_qat.py",
                "test_gguf_export.py", "test_ct_export.py", "test_lora.py", "test_cli.py"}


def pytest_sessionfinish(session, exitstatus):
    import forkserver

    forkserver.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if name in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if name in E2E_MODULES | SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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

