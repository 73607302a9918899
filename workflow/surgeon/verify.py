"""`surgeon verify`: every artifact under a folder against the sha256 its manifest recorded.

A stage checks only the inputs it reads; this finds a damaged artifact before a long run reads
it, or after a disk incident, and names the one `snakemake --forcerun` that rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .artifacts import file_hash, sidecar

MANIFEST = "manifest.json"
SIDECAR_SUFFIX = ".manifest.json"


@dataclass
class Finding:
    path: Path
    problem: str | None  # None: intact
    hashed: bool = True  # False: its manifest records no hashes (nothing to compare)


def must_have_manifest(path: Path) -> bool:
    """Model folders and curvature files: every stage that writes one writes its manifest."""
    return (path / "config.json").is_file() if path.is_dir() else path.suffix == ".h5"


def artifacts(root: Path):
    """(path, manifest path or None) of every artifact at or under `root`. A folder with a
    manifest is one artifact (not descended into); hidden names (temporaries of running
    writers, Snakemake's timestamps) are skipped; files without a manifest that need none
    (evaluation JSON, plots) are not artifacts here."""
    if root.name == MANIFEST:  # a folder named by its manifest
        root = root.parent
    elif root.is_file():
        if root.name.endswith(SIDECAR_SUFFIX):  # a file named by its sidecar
            root = root.with_name(root.name[: -len(SIDECAR_SUFFIX)])
        yield root, sidecar(root) if sidecar(root).is_file() else None
        return
    if (root / MANIFEST).is_file():
        yield root, root / MANIFEST
        return
    if must_have_manifest(root):
        yield root, None
        return
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name.endswith(SIDECAR_SUFFIX):
            continue
        if child.is_dir():
            yield from artifacts(child)
        elif sidecar(child).is_file() or must_have_manifest(child):
            yield child, sidecar(child) if sidecar(child).is_file() else None


def check(path: Path, manifest: Path | None) -> Finding:
    """Recompute the hashes `manifest` recorded for `path` (a folder's `files`, a file's
    `sha256`)."""
    if not path.exists():
        return Finding(path, f"missing (its manifest {manifest} is still there)")
    if manifest is None:
        where = MANIFEST if path.is_dir() else sidecar(path).name
        return Finding(path, f"has no manifest ({where}): its origin and hashes are unknown")
    try:
        info = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        return Finding(path, f"manifest {manifest} cannot be read ({err.__class__.__name__}: "
                             "truncated or damaged)")
    recorded = info.get("files") if path.is_dir() else info.get("sha256")
    if not recorded:
        if must_have_manifest(path):
            return Finding(path, f"manifest {manifest} records no sha256 (written before "
                                 "hashes were recorded): it cannot be checked")
        return Finding(path, None, hashed=False)
    files = recorded if path.is_dir() else {"": recorded}
    for name, sha in sorted(files.items()):
        f = path / name if name else path
        if not f.is_file():
            return Finding(path, f"{f.name} is missing (listed in {manifest.name})")
        if file_hash(f) != sha:
            return Finding(path, f"{f.name if name else 'the file'} does not match the sha256 "
                                 f"in {manifest.name} (truncated or changed after it was "
                                 "written)")
    return Finding(path, None)


def verify(roots) -> list[Finding]:
    """check() of every artifact under `roots`, each once, in order."""
    seen, findings = set(), []
    for root in roots:
        for path, manifest in artifacts(Path(root)):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                findings.append(check(path, manifest))
    return findings
