"""Atomic artifact writing, hashing and manifests.

Every stage writes its output under a temporary name next to the final path and renames it
into place only when complete, so a killed job never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from .errors import SurgeonError

MASK_FILE = "mask.safetensors"  # removed-weight mask saved beside a pruned model
QUANT_FILE = "quantization.safetensors"  # integer codes and group scales of a quantized model
TRACKED_PACKAGES = ("torch", "transformers", "safetensors", "h5py", "gguf", "snakemake")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False):
    """Yield a temporary path; on success rename it to `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_hash(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def sidecar(path: str | os.PathLike) -> Path:
    """Manifest path of a single-file artifact."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")
