"""A full disk, too little free space or an unwritable output (issue 17): one line naming the
path, a non-zero exit, and nothing half-written left behind."""

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import pytest

from helpers import random_windows, tiny_model
from surgeon import cli
from surgeon.artifacts import atomic_path, check_writable, sidecar, write_json
from surgeon.curvature_store import curvature_bytes
from surgeon.data import save_windows
from surgeon.errors import SurgeonError
from surgeon.model_folder import write_model_folder
from surgeon.models import decoder_linears


def leftovers(folder: Path) -> list[str]:
    """Temporaries and probes the writers leave when they fail to clean up."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".probe-" in p.name)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def windows(tmp_path):
    path = tmp_path / "calibration.safetensors"
    save_windows(path, random_windows(2, 8), {"seqlen": 8})
    return path


def test_full_disk_in_a_model_folder_names_it_and_leaves_nothing(tmp_path, llama_dir,
                                                                monkeypatch):
    monkeypatch.setattr("surgeon.model_folder.save_mask", enospc)
    out = tmp_path / "shot-1" / "model"
    with pytest.raises(SurgeonError) as err:
        write_model_folder(out, tiny_model("llama"), llama_dir, {}, "prune", {}, {}, 0.0)
    assert str(err.value) == f"no space left on device writing {out}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_full_disk_in_a_nested_manifest_names_the_artifact(tmp_path):
    """The manifest written inside a folder's block fails: the message names the folder (the
    artifact to rebuild), not the temporary the manifest was written into."""
    out = tmp_path / "folder"
    with pytest.raises(SurgeonError, match=f"^no space left on device writing {out}$"):
        with atomic_path(out, directory=True) as tmp:
            (tmp / "weights.bin").write_bytes(b"x" * 100)
            with atomic_path(tmp / "manifest.json") as m:
                m.write_text("{")
                enospc()
    assert not out.exists() and leftovers(tmp_path) == []


def test_full_disk_in_the_curvature_stage(tmp_path, llama_dir, windows, monkeypatch, capsys):
    """`surgeon curvature`: exit 2, one line, no curvature file, sidecar or temporary."""
    def half_written(path, *args):
        Path(path).write_bytes(b"\x89HDF" + b"\0" * 1000)
        enospc()

    monkeypatch.setattr("surgeon.curvature_store.write_curvature", half_written)
    out = tmp_path / "dense" / "curvature.h5"
    rc = cli.main(["curvature", "--model", str(llama_dir), "--calibration", str(windows),
                   "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    assert rc == 2
    assert err[-1] == f"surgeon curvature: error: no space left on device writing {out}"
    assert sum("error" in line for line in err) == 1
    assert not out.exists() and not sidecar(out).exists() and leftovers(tmp_path) == []


def test_quota_and_file_size_limit_count_as_a_full_disk(tmp_path):
    for code, note in ((errno.EDQUOT, " (disk quota exceeded)"),
                       (errno.EFBIG, " (file size limit exceeded)")):
        out = tmp_path / f"{code}.json"
        with pytest.raises(SurgeonError) as err:
            with atomic_path(out):
                raise OSError(code, os.strerror(code))
        assert str(err.value) == f"no space left on device writing {out}{note}"
    # a library that re-raises with the text only (safetensors): still recognised
    with pytest.raises(SurgeonError, match="no space left on device writing"):
        with atomic_path(tmp_path / "w.safetensors"):
            raise RuntimeError("Error while serializing: I/O error: No space left on device "
                               "(os error 28)")
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_other_failures_keep_their_own_error(tmp_path):
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.json"):
            raise KeyError("a bug, not the disk")
    assert list(tmp_path.iterdir()) == []


def test_a_sidecar_written_for_a_failed_file_goes_with_it(tmp_path):
    out = tmp_path / "curvature.h5"
    with pytest.raises(SurgeonError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"partial")
            write_json(sidecar(out), {"stage": "curvature"})
            enospc()
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_a_dead_writer_are_swept(tmp_path):
    """A crash (or a full disk that killed the process) left `.<name>.tmp-<pid>` behind: the
    next write of the same path deletes it; a live writer's temporary stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "model"
    stale = tmp_path / f".model.tmp-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".model.tmp-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".model2.tmp-{dead.pid}"  # another destination's: not ours to judge
    other.mkdir()
    with atomic_path(out, directory=True) as tmp:
        (tmp / "a.txt").write_text("a")
    assert not stale.exists() and live.exists() and other.exists()


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_file_size_limit_in_a_real_curvature_run(tmp_path, llama_dir, windows):
    """`ulimit -f` stands in for a full disk: the real h5py write fails in the subprocess."""
    out = tmp_path / "curvature.h5"
    r = subprocess.run([sys.executable, "-m", "surgeon", "curvature", "--model", str(llama_dir),
                        "--calibration", str(windows), "--out", str(out), "--device", "cpu"],
                       capture_output=True, text=True, preexec_fn=_file_size_limit(16 << 10))
    assert r.returncode == 2, r.stderr
    line = f"surgeon curvature: error: no space left on device writing {out}"
    assert r.stderr.splitlines()[-1] == f"{line} (file size limit exceeded)", r.stderr
    assert not out.exists() and not sidecar(out).exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_file_size_limit_while_writing_the_curvature_checkpoint(tmp_path, llama_dir, windows):
    """torch.save of the running sums fails: one line naming the checkpoint (torch alone says
    "iostream error"), no checkpoint, temporary or curvature file; without the limit the same
    command then succeeds."""
    out, ckpt = tmp_path / "curvature.h5", tmp_path / "curvature.ckpt"
    args = ["curvature", "--model", str(llama_dir), "--calibration", str(windows),
            "--out", str(out), "--checkpoint", str(ckpt), "--checkpoint-every", "1",
            "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "surgeon", *args], capture_output=True, text=True,
                       preexec_fn=_file_size_limit(8 << 10))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (f"surgeon curvature: error: no space left on device "
                                         f"writing {ckpt} (file size limit exceeded)"), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not ckpt.exists() and leftovers(tmp_path) == []
    assert cli.main(args) == 0 and out.is_file() and not ckpt.exists()


# --- an output that cannot be written fails before any work --------------------------------

STAGE_ARGS = {
    "curvature": ["--model", "{model}", "--calibration", "{windows}"],
    "prune": ["--model", "{model}", "--method", "magnitude", "--target", "0.5"],
    "recover": ["--model", "{model}", "--windows", "{windows}", "--loss-out", "{tmp}/loss.tsv"],
    "quantize": ["--model", "{model}", "--method", "rtn"],
}


def unwritable(tmp_path) -> Path:
    """A folder nobody can write into, not even root: it sits under a regular file."""
    (tmp_path / "file.txt").write_text("not a folder")
    return tmp_path / "file.txt" / "out"


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_unwritable_output_fails_before_computing(stage, tmp_path, llama_dir, windows,
                                                  monkeypatch, capsys):
    def must_not_run(args):
        raise AssertionError("the stage ran although its output cannot be written")

    monkeypatch.setattr(f"surgeon.stages.{stage}.cmd_{stage}", must_not_run)
    out = unwritable(tmp_path) / "curvature.h5"
    args = [a.format(model=llama_dir, windows=windows, tmp=tmp_path) for a in STAGE_ARGS[stage]]
    rc = cli.main([stage, *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == (f"surgeon {stage}: error: cannot write {out}: {tmp_path / 'file.txt'} is a "
                   "file, not a folder")
    assert leftovers(tmp_path) == []


def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (see the file.txt case)")
        with pytest.raises(SurgeonError) as err:
            check_writable(folder / "curvature.h5")
        assert str(err.value) == (f"cannot write {folder / 'curvature.h5'}: {folder} is not "
                                  "writable (Permission denied)")
    finally:
        folder.chmod(0o700)
    assert leftovers(tmp_path) == []


def test_writable_output_passes_and_leaves_no_probe(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "curvature.h5")
    assert (tmp_path / "new" / "deeper").is_dir() and leftovers(tmp_path) == []


# --- too little free space for what a stage will write: it stops before computing ----------

def free_space(monkeypatch, free: int) -> None:
    """Every filesystem reports `free` bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free))


def must_not_run(*args, **kwargs):
    raise AssertionError("the stage went on although the disk cannot hold its output")


def stored_bytes(h5: Path) -> int:
    """Bytes of the datasets of an .h5 file; visititems visits a hard-linked one (a shared A)
    once."""
    sizes = []
    with h5py.File(h5, "r") as f:
        f.visititems(lambda name, obj: sizes.append(obj.nbytes)
                     if isinstance(obj, h5py.Dataset) else None)
    return sum(sizes)


def test_curvature_stage_stops_before_any_window_without_space(tmp_path, llama_dir, windows,
                                                               monkeypatch, capsys):
    """The .h5 and the checkpoint of running sums, sized from the model's shapes, do not fit:
    one line with both sizes, exit 2, nothing written; with the space there the same command
    writes a file of exactly the factors' size."""
    factors = curvature_bytes(decoder_linears(tiny_model("llama")))
    free_space(monkeypatch, factors)  # room for the .h5, not for the checkpoint beside it
    monkeypatch.setattr("surgeon.data.load_windows", must_not_run)  # read by the stage
    out, ckpt = tmp_path / "dense" / "curvature.h5", tmp_path / "dense" / "curvature.ckpt"
    args = ["curvature", "--model", str(llama_dir), "--calibration", str(windows),
            "--out", str(out), "--checkpoint", str(ckpt), "--checkpoint-every", "1",
            "--device", "cpu"]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"surgeon curvature: error: not enough free space for {out}: needs about "
        f"{2 * factors / 1e9:.3g} GB, {factors / 1e9:.3g} GB free")
    assert list(out.parent.iterdir()) == [] and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert cli.main(args) == 0 and not ckpt.exists()
    assert stored_bytes(out) == factors


def test_prune_shot_stops_before_loading_the_model_without_space(tmp_path, llama_dir,
                                                                 monkeypatch, capsys):
    """A shot writes its input folder again with a one-byte-per-weight mask."""
    folder = sum(f.stat().st_size for f in llama_dir.rglob("*") if f.is_file())
    mask = sum(layer.weight.numel() for layer in decoder_linears(tiny_model("llama")).values())
    free_space(monkeypatch, 1000)
    monkeypatch.setattr("surgeon.models.load_model", must_not_run)
    out = tmp_path / "shot-1" / "model"
    rc = cli.main(["prune", "--model", str(llama_dir), "--method", "magnitude",
                   "--target", "0.5", "--out", str(out)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        f"surgeon prune: error: not enough free space for {out}: needs about "
        f"{(folder + mask) / 1e9:.3g} GB, 1e-06 GB free")
    assert list(out.parent.iterdir()) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("stage,extra,codes", [
    ("recover", ["--windows", "W", "--loss-out", "LOSS"], False),
    ("quantize", ["--method", "rtn"], True),
    ("compact", [], False),
])
def test_model_folder_stages_stop_before_loading_the_model_without_space(
        tmp_path, llama_dir, windows, monkeypatch, capsys, stage, extra, codes):
    """recover, quantize and compact write a model folder as large as their input (quantize:
    with its codes too): checked before the model is loaded, one line, nothing written."""
    folder = sum(f.stat().st_size for f in llama_dir.rglob("*") if f.is_file())
    weights = sum(layer.weight.numel() for layer in decoder_linears(tiny_model("llama")).values())
    needed = folder + weights + (5 * weights // 4 if codes else 0)
    free_space(monkeypatch, 1000)
    monkeypatch.setattr("surgeon.models.load_model", must_not_run)
    out = tmp_path / stage / "model"
    names = {"W": str(windows), "LOSS": str(tmp_path / stage / "loss.tsv")}
    extra = [names.get(a, a) for a in extra]
    rc = cli.main([stage, "--model", str(llama_dir), *extra, "--out", str(out)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        f"surgeon {stage}: error: not enough free space for {out}: needs about "
        f"{needed / 1e9:.3g} GB, 1e-06 GB free")
    assert not out.exists() and leftovers(tmp_path) == []
