"""The recover stage: masked LoRA that keeps sparsity, a loss curve, and resume after a kill."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import random_windows, tiny_model
from surgeon.lora import LoraSettings, lora_train
from surgeon.models import decoder_linears

STEPS = 200


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tokenizer):
    """A tiny Llama with half of every decoder Linear zeroed, and windows to recover on."""
    out = tmp_path_factory.mktemp("pruned")
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in decoder_linears(model).values():
            layer.weight[torch.rand(layer.weight.shape, generator=g) < 0.5] = 0
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    save_file({"windows": random_windows(8, 32, seed=5)}, str(out / "windows.safetensors"))
    return out


def recover_cmd(root, name, steps=STEPS, every=5):
    return [sys.executable, "-m", "surgeon", "--threads", "1", "recover",
            "--model", root / "model", "--windows", root / "windows.safetensors",
            "--steps", steps, "--lr", "1e-3", "--rank", 2, "--batch-size", 2,
            "--grad-accum", 2, "--targets", "q_proj,up_proj,down_proj",
            "--checkpoint", root / f"{name}.ckpt", "--checkpoint-every", every,
            "--device", "cpu", "--loss-out", root / f"{name}.tsv", "--out", root / name]


def run(cmd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result


# `python -m surgeon ...` that also prints how many optimizer steps the process took
COUNT_STEPS = """
import sys, torch
from surgeon.cli import main
steps, step = 0, torch.optim.AdamW.step
def counted(self, *args, **kwargs):
    global steps
    steps += 1
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = counted
code = main(sys.argv[1:])
print(f"optimizer steps in this process: {steps}")
sys.exit(code)
"""


def counting_optimizer_steps(cmd):
    assert cmd[1:3] == ["-m", "surgeon"]
    return [cmd[0], "-c", COUNT_STEPS, *cmd[3:]]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(pruned):
    reference = run(recover_cmd(pruned, "straight"))
    assert "resuming" not in reference.stdout

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ckpt = pruned / "killed.ckpt"
    proc = subprocess.Popen(list(map(str, recover_cmd(pruned, "killed"))), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run ended before writing a checkpoint"
    assert not (pruned / "killed").exists() and not (pruned / "killed.tsv").exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < STEPS

    resumed = run(counting_optimizer_steps(recover_cmd(pruned, "killed")))
    assert f"resuming from step {step}" in resumed.stdout
    # the resumed job trained only the steps after the checkpoint
    assert f"optimizer steps in this process: {STEPS - step}" in resumed.stdout
    assert not ckpt.exists()  # removed once the output is in place
    a, b = weights(pruned / "straight"), weights(pruned / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (pruned / "straight.tsv").read_text() == (pruned / "killed.tsv").read_text()


def test_sparsity_kept_only_targets_change_and_loss_curve(pruned):
    run(recover_cmd(pruned, "short", steps=30))
    before, after = weights(pruned / "model"), weights(pruned / "short")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in {"q_proj", "up_proj", "down_proj"}
                           for k in changed)
    for key in changed:
        assert torch.equal(after[key] == 0, before[key] == 0), key
    rows = (pruned / "short.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss" and len(rows) == 31
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_stale_checkpoint_of_another_run_is_ignored(tmp_path):
    model = tiny_model("llama")
    windows = random_windows(4, 16)
    masks = {n: layer.weight == 0 for n, layer in decoder_linears(model).items()}
    settings = LoraSettings(rank=2, steps=4, lr=1e-3)
    from surgeon.lora import Checkpoint

    stale = Checkpoint(tmp_path / "c.pt", 1, "other run")
    torch.save({"fingerprint": "another", "step": 3, "losses": [1.0] * 3}, stale.path)
    losses = lora_train(model, windows, masks, settings, stale, progress=False)
    assert len(losses) == 4


def test_unknown_target_module_is_a_clear_error(pruned):
    cmd = recover_cmd(pruned, "bad", steps=2)
    cmd[cmd.index("q_proj,up_proj,down_proj")] = "fc9"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "match no decoder Linear" in r.stderr.strip().splitlines()[-1]
    assert not (pruned / "bad").exists()
