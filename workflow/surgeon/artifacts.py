"""Atomic artifact writing, hashing and manifests.

Every stage writes its output under a temporary name next to the final path and renames it
into place only when complete, so a killed job never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .errors import SurgeonError

MASK_FILE = "mask.safetensors"  # removed-weight mask saved beside a pruned model
QUANT_FILE = "quantization.safetensors"  # integer codes and group scales of a quantized model
TRACKED_PACKAGES = ("torch", "transformers", "safetensors", "h5py", "gguf", "snakemake")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# a write that failed for want of room: the disk, the quota, or the file-size limit (ulimit -f)
DISK_FULL = {errno.ENOSPC: "", errno.EDQUOT: " (disk quota exceeded)",
             errno.EFBIG: " (file size limit exceeded)"}
LOW_SPACE = 1 << 20  # bytes free below which a failed write is taken for a full disk


def _disk_full(err: BaseException, folder: Path) -> int | None:
    """The errno of a full disk behind `err`. h5py, safetensors and torch re-raise it as their
    own exceptions, with the text only (or, torch, not even that: then the free space tells)."""
    io_error, seen = isinstance(err, (OSError, RuntimeError)), set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return err.errno
        for code in DISK_FULL:
            if os.strerror(code) in str(err) or f"os error {code})" in str(err):
                return code
        err = err.__cause__ or err.__context__
    if not io_error:  # a bug in the block is not blamed on a nearly full disk
        return None
    try:
        return errno.ENOSPC if shutil.disk_usage(folder).free < LOW_SPACE else None
    except OSError:
        return None


def _sweep(path: Path) -> None:
    """Delete the temporaries of earlier writes of `path` whose process is gone (a crash or a
    full disk killed it): they hold the size of a whole model or curvature file."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove_quietly(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False):
    """Yield a temporary path; on success rename it to `path`, on failure delete it.

    .safetensors files written in the block get their header sorted (equal content, equal
    bytes). The manifest written with the artifact (a folder's manifest.json, or a file's sidecar
    written inside the block) gets the sha256 of what was written, so a later stage can tell
    a truncated or altered artifact from the real one before using it (verify_artifact).
    A sidecar written in a failed block is deleted with the temporary; a full disk becomes a
    SurgeonError naming `path`.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    sidecar_before = _identity(sidecar(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        _remove(tmp)
        if directory:
            tmp.mkdir()
        yield tmp
        if directory:
            for f in tmp.rglob("*.safetensors"):
                sort_safetensors_header(f)
        elif path.suffix == ".safetensors" and tmp.is_file():
            sort_safetensors_header(tmp)
        if directory and (tmp / "manifest.json").is_file():
            _record_hashes(tmp / "manifest.json", files=_folder_hashes(tmp))
        elif not directory and tmp.is_file() and _identity(sidecar(path)) not in (
            None, sidecar_before
        ):
            _record_hashes(sidecar(path), sha256=file_hash(tmp))
        _remove(path)
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        if not directory and _identity(sidecar(path)) != sidecar_before:
            _remove_quietly(sidecar(path))  # it describes what was not written
        code = _disk_full(err, path.parent) if isinstance(err, Exception) else None
        if code is not None:
            raise SurgeonError(f"no space left on device writing {path}{DISK_FULL[code]}") from err
        raise


def torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a Python file object. Given a path, torch's C++ writer reports a full
    disk as "iostream error" without the errno; through a file object the OSError stays in the
    exception chain, so atomic_path turns it into its one-line full-disk error."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


def check_writable(path: str | os.PathLike) -> None:
    """Fail at once, not after hours of computing, when `path` cannot be written: its folder
    exists or can be made, and a file can be created in it."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        above = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        why = (f"{above} is a file, not a folder" if not above.is_dir()
               else f"{above} is not writable ({err.strerror or err})")
        raise SurgeonError(f"cannot write {path}: {why}") from None


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Fail before a long stage starts, not when its last write finds the disk full: `needed`
    (bytes the stage will write, sized from the model's shapes) against the free space of the
    filesystem `path` goes to."""
    folder = Path(path).parent
    folder = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SurgeonError(f"not enough free space for {path}: needs about {needed / 1e9:.3g} "
                           f"GB, {free / 1e9:.3g} GB free")


# options of `surgeon <stage>` that name a file or folder the stage writes
OUTPUT_OPTIONS = ("out", "loss_out", "calibration_out", "evaluation_out", "checkpoint")


def check_outputs(options: dict) -> None:
    """check_writable for every output a stage was given (OUTPUT_OPTIONS)."""
    for name in OUTPUT_OPTIONS:
        value = options.get(name)
        if isinstance(value, (str, os.PathLike)) and str(value):
            check_writable(value)


def sort_safetensors_header(path: Path) -> None:
    """Rewrite a .safetensors header with its keys sorted, in place and at the same length.

    safetensors writes the header (tensor entries and __metadata__) in hash-map order, which
    changes from process to process: sorted, equal content gives equal bytes (and hashes).
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        try:
            header = json.loads(raw)
        except ValueError:
            return
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        text = text.encode()
        if len(text) > size:  # never move the data; leave such a file as written
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


def _identity(path: Path):
    """(inode, mtime) of a file, None when absent: tells whether a block rewrote it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _folder_hashes(folder: Path) -> dict:
    return {str(f.relative_to(folder)): file_hash(f)
            for f in sorted(p for p in folder.rglob("*") if p.is_file())
            if f != folder / "manifest.json"}


def _record_hashes(manifest_path: Path, **hashes) -> None:
    info = json.loads(manifest_path.read_text())
    write_json(manifest_path, {**info, **hashes})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_quietly(path: Path) -> None:
    """_remove on a failure path: a second error must not hide the first."""
    try:
        _remove(path)
    except OSError:
        pass


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


_HASHES: dict[tuple, str] = {}  # (path, inode, size, mtime) -> sha256, within one process


def file_hash(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file; a file already hashed unchanged in this process is not read again
    (verifying an input and recording it in the manifest read it once)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def tree_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (names + contents, manifest excluded)."""
    path = Path(path)
    if not path.exists():
        raise SurgeonError(f"input not found: {path}")
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def manifest(stage: str, inputs: dict, config: dict, started: float, **extra) -> dict:
    """Provenance of an artifact: inputs with hashes, config subset, versions, wall time."""
    return {
        "stage": stage,
        "inputs": {k: {"path": str(v), "sha256": tree_hash(v)} for k, v in inputs.items()},
        "config": config,
        "versions": package_versions(),
        "wall_time_s": round(time.time() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def made_by(model_dir) -> dict:
    """The manifest of the stage that wrote `model_dir` ({} when there is none)."""
    path = Path(model_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def prune_settings(model_dir, max_hops: int = 64) -> dict:
    """The config of the prune shot that made the model in `model_dir`, found by following the
    manifests' input models back (recovered, compacted and quantized folders name the model
    they came from); {} for a model no prune stage touched."""
    path = Path(model_dir)
    for _ in range(max_hops):
        m = made_by(path)
        if m.get("stage") == "prune":
            return m.get("config", {})
        source = m.get("inputs", {}).get("model", {}).get("path")
        if not source:
            return {}
        path = Path(source)
    return {}


def compress_wall(model_dir) -> float:
    """Seconds spent so far compressing the model in `model_dir` (0 for an imported model)."""
    return made_by(model_dir).get("compress_wall_s", 0.0)


def sidecar(path: str | os.PathLike) -> Path:
    """Manifest path of a single-file artifact."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


# options of `surgeon <stage>` that name an artifact another stage wrote
INPUT_OPTIONS = ("model", "curvature", "calibration", "windows", "evaluation", "check_windows",
                 "teacher")


def rebuild_hint(path: str | os.PathLike, configfile: str | os.PathLike = "") -> str:
    if configfile:
        return (f"rebuild it with `snakemake --forcerun {path} --configfile {configfile}`, "
                "or delete it and run snakemake again")
    return (f"rebuild it with `snakemake --forcerun {path}` (with the --configfile of the run), "
            "or delete it and run snakemake again")


def verify_artifact(path: str | os.PathLike) -> None:
    """Check an artifact against the sha256 its manifest recorded when it was written.

    A folder is checked file by file against manifest.json's `files`, a file against its
    sidecar's `sha256`. Artifacts without recorded hashes (external models, files written
    before hashes were recorded) are not checked here.
    """
    path = Path(path)
    if path.is_dir():
        manifest_path, expected = path / "manifest.json", "files"
    elif path.is_file():
        manifest_path, expected = sidecar(path), "sha256"
    else:
        return
    try:
        recorded = json.loads(manifest_path.read_text()).get(expected)
    except (OSError, ValueError):
        return
    if not recorded:
        return
    files = recorded if path.is_dir() else {"": recorded}
    for name, sha in files.items():
        f = path / name if name else path
        if not f.is_file():
            raise SurgeonError(f"{f} is missing (listed in {manifest_path}); "
                               + rebuild_hint(path))
        if file_hash(f) != sha:
            raise SurgeonError(
                f"{f} does not match the sha256 recorded in {manifest_path} (truncated or "
                f"changed after it was written); " + rebuild_hint(path))


def verify_inputs(options: dict) -> None:
    """verify_artifact for every input artifact a stage was given (INPUT_OPTIONS)."""
    for name in INPUT_OPTIONS:
        value = options.get(name)
        if isinstance(value, (str, os.PathLike)) and str(value):
            verify_artifact(value)
