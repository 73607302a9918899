"""The tests' fork server (tests/forkserver.py) behaves as the `surgeon` process it stands in
for: same output, exit status and one-line errors, the caller's resource limits, signals
passed on, and a job that dies with its shim. If it did not, every workflow test would be
testing something other than what `make run` runs."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import forkserver
from helpers import random_windows, workflow_env
from surgeon.data import save_windows

pytestmark = pytest.mark.skipif(os.environ.get("SURGEON_TEST_FORKSERVER") == "0",
                                reason="the fork server is turned off")


def via_shim(args, cwd, env=None, **kwargs):
    env = {**workflow_env(), **(env or {})}
    assert forkserver.SOCKET_VAR in env
    return subprocess.run(["surgeon", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, **kwargs)


def alone(args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "surgeon", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, **kwargs)


def test_output_status_and_errors_are_the_process_ones(tmp_path):
    for args in (["--version"], ["inspect", "missing.h5"], ["prune", "--no-such-option"]):
        served, plain = via_shim(args, tmp_path), alone(args, tmp_path)
        assert (served.returncode, served.stdout, served.stderr) == \
            (plain.returncode, plain.stdout, plain.stderr), args
    assert via_shim(["inspect", "missing.h5"], tmp_path).returncode == 2


def test_a_different_import_time_environment_runs_alone(tmp_path):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: a job with another value
    cannot use the server's modules, so it runs as its own process (same result). A value
    the imports set themselves (lm_eval's HF_XET_HIGH_PERFORMANCE) matches absent or set."""
    before = {"HF_HUB_OFFLINE": "1", "PATH": "/bin"}
    after = {**before, "HF_XET_HIGH_PERFORMANCE": "1"}
    same = forkserver._same_imports
    assert same({**before, "PATH": "/usr/bin", "OMP_NUM_THREADS": "2"}, before, after)
    assert same({**after, forkserver.SOCKET_VAR: "/tmp/s"}, before, after)
    assert not same({**before, "HF_HUB_OFFLINE": "0"}, before, after)
    assert not same({**before, "HF_HOME": "/elsewhere"}, before, after)
    assert not same({**before, "HF_XET_HIGH_PERFORMANCE": "0"}, before, after)
    env = {"HF_HUB_OFFLINE": "0"}
    assert via_shim(["--version"], tmp_path, env).stdout == alone(["--version"], tmp_path).stdout


def test_the_callers_file_size_limit_applies_to_the_job(tmp_path, llama_dir):
    """`ulimit -f` of the shim's caller is the job's: the curvature write fails with the
    same one line as in tests/test_write_faults.py."""
    windows = tmp_path / "calibration.safetensors"
    save_windows(windows, random_windows(2, 8), {"seqlen": 8})
    out = tmp_path / "curvature.h5"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    r = via_shim(["curvature", "--model", llama_dir, "--calibration", windows, "--out", out,
                  "--device", "cpu"], tmp_path, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (f"surgeon curvature: error: no space left on device "
                                         f"writing {out} (file size limit exceeded)")


def jobs_in(folder: Path) -> list[int]:
    """Processes working in `folder` (the forked job, not the shim: that one is ours)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_shim_takes_its_job_with_it(tmp_path, llama_dir, sig):
    """SIGTERM (Snakemake stopping a job) reaches the job and the shim dies of it; SIGKILL
    of the shim (a killed run) ends the job too: nothing keeps computing or writing. The
    job is served even though this process has imported the libraries that set variables
    in os.environ (lm_eval, sklearn), as the suite's earlier tests do."""
    import lm_eval  # noqa: F401
    import sklearn  # noqa: F401

    windows = tmp_path / "calibration.safetensors"
    save_windows(windows, random_windows(400, 32), {"seqlen": 32})
    out = tmp_path / "curvature.h5"
    shim = subprocess.Popen(
        ["surgeon", "curvature", "--model", str(llama_dir), "--calibration", str(windows),
         "--out", str(out), "--device", "cpu"], cwd=tmp_path, env=workflow_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(jobs_in(tmp_path)) < 2:  # the shim and the job
        assert shim.poll() is None and time.time() < deadline
        time.sleep(0.05)
    shim.send_signal(sig)
    assert shim.wait(timeout=30) == -sig
    deadline = time.time() + 10
    while jobs_in(tmp_path):
        assert time.time() < deadline, "the job outlived its shim"
        time.sleep(0.05)
    assert not out.exists()
