"""The tiny-model workflow submitted to a live single-node SLURM cluster through
profiles/slurm and snakemake-executor-plugin-slurm.

The test installs slurm-wlm and munge from Debian packages when they are missing, starts
munged, slurmctld and slurmd on localhost (no cgroups: proctrack/linuxproc, task/none), runs
the workflow with `--workflow-profile profiles/slurm`, checks the artifacts and what every
SLURM job asked for, and stops the daemons. It needs root (daemons, /etc/slurm) and apt-get.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import REPO, tiny_config  # noqa: E402

SLURM_DIR = Path("/etc/slurm")  # the plugin's job steps drop SLURM_CONF: clients read this
MARKER = "# written by tests/integration/test_slurm.py"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "srun")
PARTITION = "surgeon-test"
# the rules of the minimal run below that profiles/slurm gives a GPU (no other rule gets one)
GPU_RULES = {"estimate_dense_curvature", "prune_shot", "evaluate"}


def _binary(name):
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
        None)


def _why_not_runnable():
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root: it installs slurm-wlm/munge and starts munged, slurmctld, slurmd"
    if all(_binary(b) for b in DAEMONS + CLIENTS):
        return None
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm and munge"
    return None


pytestmark = pytest.mark.skipif(_why_not_runnable() is not None,
                                reason=str(_why_not_runnable()))


def install_slurm():
    """apt-get install slurm-wlm munge, once (an `apt-get update` only if the first try fails)."""
    if all(_binary(b) for b in DAEMONS + CLIENTS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=True)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"apt-get install slurm-wlm munge failed:\n{r.stderr[-3000:]}"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    """A one-node cluster on localhost without cgroups or accounting.

    The node claims 16 CPUs, 128 GB and one GPU whatever the machine has
    (SlurmdParameters=config_overrides; the GPU is a GRES on /dev/null), so the profile's
    requests (8 CPUs, --gpus=1) are submitted unchanged. Jobs stay visible to squeue for an
    hour (MinJobAge), which is how the plugin checks them without slurmdbd.
    """
    ctld_port, slurmd_port = free_ports(2)
    return f"""{MARKER}
ClusterName=surgeon-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=128000 Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def wait_for(predicate, timeout, what, logs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{Path(p).read_text()[-2000:]}" for p in logs if Path(p).exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd on localhost; stopped (and /etc/slurm cleaned) after."""
    install_slurm()
    conf = SLURM_DIR / "slurm.conf"
    if conf.exists() and MARKER not in conf.read_text():
        pytest.skip(f"{conf} exists and was not written by this test: not touching a real "
                    "cluster's configuration")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    SLURM_DIR.mkdir(exist_ok=True)
    conf.write_text(slurm_conf(root, host, sock))
    (SLURM_DIR / "gres.conf").write_text(f"{MARKER}\nNodeName={host} Name=gpu File=/dev/null\n")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [_binary("munged"), "--foreground", "--force", f"--socket={sock}",
             f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
             f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed"]))
        wait_for(sock.exists, 30, "munged's socket", [root / "munge/munged.log"])
        logs = [root / "slurmctld.log", root / "slurmd.log"]
        procs.append(subprocess.Popen([_binary("slurmctld"), "-D", "-i"]))
        wait_for(lambda: subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
                 .stdout.count("UP") > 0, 60, "slurmctld", logs)
        procs.append(subprocess.Popen([_binary("slurmd"), "-D", "-N", host]))

        def node_idle():
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                                 text=True).stdout.split()
            return out == ["idle"]

        wait_for(node_idle, 60, "the node to be idle", logs)
        yield root
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in ("slurm.conf", "gres.conf"):
            path = SLURM_DIR / name
            if path.exists() and MARKER in path.read_text():
                path.unlink()


def jobs_of_cluster() -> list[dict]:
    """Every job slurmctld still remembers, as {field: value} (scontrol show job -o)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                         check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def profile_gpus() -> dict[str, int]:
    """GPUs per rule in profiles/slurm (0 where the profile asks for none)."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    return {rule: int(res.get("gpu", 0)) for rule, res in profile["set-resources"].items()}


def test_workflow_runs_through_slurm(cluster, tmp_path, llama_dir):
    """import -> calibrate (+ out-of-domain windows) -> curvature -> prune -> evaluate, each a
    SLURM job: CPU-only data stages, GPU stages with --gpus=1, CPUs, time and memory as the
    profile and resources.smk ask (for a tiny model: the memory floors)."""
    cfg = tiny_config(llama_dir)
    cfg.pop("quantization"), cfg.pop("recovery")
    cfg["experiments"] = {"surgeon": {"method": "llm-surgeon", "structure": "unstructured",
                                      "target": 0.5}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SLURM_CONF", None)
    target = "results/tiny/surgeon/eval/shot-1.json"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--workflow-profile", str(REPO / "profiles/slurm"),
           "--configfile", str(tmp_path / "config.yaml"),
           # the documented override for a cluster's partition (account: slurm_account=...)
           "--default-resources", f"slurm_partition={PARTITION}",
           # no slurmdbd here: squeue answers for finished jobs while MinJobAge lasts
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--latency-wait", "10", target]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]

    res = tmp_path / "results" / "tiny"
    assert (res / "dense" / "model" / "model.safetensors").is_file()
    assert (res / "dense" / "curvature.h5").is_file()
    assert (res / "surgeon" / "shot-1" / "model" / "mask.safetensors").is_file()
    result = json.loads((tmp_path / target).read_text())
    assert abs(result["sparsity"] - 0.5) < 1e-3 and result["ppl"] > 1

    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    jobs = {j["JobId"]: j for j in jobs_of_cluster()}
    assert submitted and set(submitted) <= set(jobs)
    rules = {}
    for job_id in submitted:
        job = jobs[job_id]
        assert job["JobState"] == "COMPLETED" and job["Partition"] == PARTITION, job
        rule = re.match(r"rule_(\w+?)_wildcards", job["Comment"]).group(1)
        rules.setdefault(rule, []).append(job)
    assert sorted(rules) == ["calibrate", "estimate_dense_curvature", "evaluate",
                             "import_model", "ood_windows", "prune_shot"]
    gpus = profile_gpus()
    assert [r for r in sorted(rules) if gpus[r]] == ["estimate_dense_curvature", "evaluate",
                                                   "prune_shot"]
    for rule, (job,) in rules.items():
        assert ("gres:gpu:1" in job.get("TresPerJob", "")) == bool(gpus[rule]), (rule, job)
    curvature = rules["estimate_dense_curvature"][0]
    assert curvature["NumCPUs"] == "8" and curvature["TimeLimit"] == "04:00:00"
    assert curvature["MinMemoryNode"] == "1000M"
    calibrate = rules["calibrate"][0]
    assert calibrate["NumCPUs"] == "2" and calibrate["MinMemoryNode"] == "1000M"
