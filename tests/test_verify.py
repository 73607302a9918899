"""`surgeon verify` (issue 17): artifacts written by the project's own writers, then damaged."""

import json
import time

import pytest

from helpers import curvature_file, random_windows, tiny_model
from surgeon import cli
from surgeon.artifacts import atomic_path, manifest, sidecar, write_json
from surgeon.model_folder import write_model_folder


@pytest.fixture
def run(tmp_path, llama_dir):
    """results/ of a tiny run: a pruned model folder, a curvature file with the sidecar the
    curvature stage writes, an evaluation JSON (no manifest needed), a running writer's
    temporary and an orphan sidecar of a deleted temp() file."""
    results = tmp_path / "results"
    model = results / "tiny" / "e" / "shot-1" / "model"
    write_model_folder(model, tiny_model("llama"), llama_dir, {}, "prune", {}, {}, time.time())
    h5 = results / "tiny" / "dense" / "curvature.h5"
    with atomic_path(h5) as tmp:
        curvature_file(tiny_model("llama"), tmp, random_windows(2, 8))
        write_json(sidecar(h5), manifest("curvature", {}, {"fisher": "empirical"}, time.time()))
    write_json(results / "tiny" / "e" / "eval" / "shot-1.json", {"ppl": 1.0})
    (results / "tiny" / "e" / ".shot-2.tmp-999999").mkdir()
    write_json(results / "tiny" / "e" / "scratch" / "curvature.h5.manifest.json", {})
    return results, model, h5


def verify(capsys, *argv):
    rc = cli.main(["verify", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def hint(path):
    return (f"rebuild it with `snakemake --forcerun {path} --configfile run.yaml`, or delete it "
            "and run snakemake again")


def test_an_intact_run_passes_with_a_count(run, capsys):
    results, _, _ = run
    before = tree(results)
    rc, lines, err = verify(capsys, results)
    assert (rc, lines, err) == (0, ["verify: 2 artifacts checked, all match their manifests"], "")
    assert tree(results) == before  # reads only


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped byte in the weights": (
        lambda model, h5: flip_byte(model / "model.safetensors"), "model",
        "model.safetensors does not match the sha256 in manifest.json (truncated or changed "
        "after it was written)"),
    "truncated curvature": (
        lambda model, h5: truncate(h5), "h5",
        "the file does not match the sha256 in curvature.h5.manifest.json (truncated or changed "
        "after it was written)"),
    "deleted folder manifest": (
        lambda model, h5: (model / "manifest.json").unlink(), "model",
        "has no manifest (manifest.json): its origin and hashes are unknown"),
    "deleted curvature sidecar": (
        lambda model, h5: sidecar(h5).unlink(), "h5",
        "has no manifest (curvature.h5.manifest.json): its origin and hashes are unknown"),
    "deleted mask": (
        lambda model, h5: (model / "mask.safetensors").unlink(), "model",
        "mask.safetensors is missing (listed in manifest.json)"),
    "truncated manifest": (
        lambda model, h5: truncate(model / "manifest.json"), "model",
        "manifest {manifest} cannot be read (JSONDecodeError: truncated or damaged)"),
    "manifest without hashes": (
        lambda model, h5: sidecar(h5).write_text(json.dumps({"stage": "curvature"})), "h5",
        "manifest {manifest} records no sha256 (written before hashes were recorded): it "
        "cannot be checked"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_artifact_is_one_line_with_its_rebuild(damage, run, capsys):
    results, model, h5 = run
    harm, which, problem = DAMAGE[damage]
    harm(model, h5)
    before = tree(results)
    path = model if which == "model" else h5
    problem = problem.format(manifest=model / "manifest.json" if which == "model" else sidecar(h5))
    rc, lines, err = verify(capsys, results, "--configfile", "run.yaml")
    assert rc == 1 and err == ""
    assert lines == [f"damaged: {path}: {problem}; {hint(path)}",
                     "verify: 2 artifacts checked, 1 damaged"]
    assert tree(results) == before  # nothing written, nothing left behind


def test_paths_name_single_artifacts(run, capsys):
    """A model folder, its manifest or a file's sidecar name that one artifact."""
    results, model, h5 = run
    flip_byte(h5)
    rc, lines, _ = verify(capsys, model, model / "manifest.json", sidecar(h5))
    assert rc == 1 and lines[-1] == "verify: 2 artifacts checked, 1 damaged"
    assert lines[0].startswith(f"damaged: {h5}: the file does not match")
    assert "(with the --configfile of the run)" in lines[0]  # no --configfile given


def test_unhashed_manifests_of_other_artifacts_are_counted_not_failed(run, capsys):
    """Zero-shot summaries' sidecars record provenance but no hash: not a damage."""
    results, _, _ = run
    out = results / "tiny" / "e" / "zeroshot" / "shot-1.json"
    write_json(out, {"acc": 0.5})
    write_json(sidecar(out), {"stage": "zeroshot"})
    rc, lines, _ = verify(capsys, results)
    assert rc == 0
    assert lines == ["verify: 3 artifacts checked (1 record no hashes, not compared), all "
                     "match their manifests"]


def test_a_missing_path_is_an_error(tmp_path, capsys):
    rc, lines, err = verify(capsys, tmp_path / "nowhere")
    assert rc == 2 and lines == []
    assert err.strip() == f"surgeon verify: error: no such file or folder: {tmp_path / 'nowhere'}"
