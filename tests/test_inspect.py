"""surgeon inspect: model order, csv/json, damaged factors flagged, no traceback into a pipe."""

import json
import subprocess
import sys
import time

import torch

from surgeon.artifacts import manifest
from surgeon.cli import main
from surgeon.curvature_store import write_curvature


def curvature(path, bad_layer=None, layers=(10, 2, 1)):
    factors, meta = {}, {}
    for i in layers:  # written out of model order
        name = f"model.layers.{i}.mlp.down_proj"
        X = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
        G = X.T @ X / 8
        if name == bad_layer:
            G = -G  # what a flipped sign bit does to a factor
        factors[name] = (torch.eye(3), G)
        meta[name] = {"weight_shape": [4, 3], "tokens": 8}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_curvature(path, factors, {"fisher": "empirical"}, meta)
    return path


def test_inspect_lists_layers_in_model_order_as_csv_and_json(tmp_path, capsys):
    path = curvature(tmp_path / "c.h5")
    assert main(["inspect", str(path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"model.layers.{i}.mlp.down_proj" for i in (1, 2, 10)]
    assert main(["inspect", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["check"] for r in rows] == ["ok"] * 3 and rows[0]["A_trace"] == 3.0


def test_inspect_flags_impossible_factors(tmp_path, capsys):
    path = curvature(tmp_path / "c.h5", bad_layer="model.layers.2.mlp.down_proj")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "negative eigenvalue of G" in err and "--forcerun" in err and len(err.splitlines()) == 1


def test_inspect_into_a_closed_pipe_prints_no_traceback(tmp_path):
    path = curvature(tmp_path / "c.h5", layers=range(1000))  # more than a pipe buffer
    run = subprocess.run(f"{sys.executable} -m surgeon inspect {path} | head -1", shell=True,
                         capture_output=True, text=True)
    assert run.stdout.startswith("layer") and "Traceback" not in run.stderr


def prune_manifest(model_dir, curvature_file, **damping):
    """The manifest a prune shot that read `curvature_file` writes into its model folder."""
    model_dir.mkdir(parents=True)
    info = manifest("prune", {"curvature": curvature_file}, {"method": "llm-surgeon", **damping},
                    time.time())
    (model_dir / "manifest.json").write_text(json.dumps(info))
    return model_dir / "manifest.json"


def inspect_json(capsys, *args):
    assert main(["inspect", *map(str, args), "--format", "json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_inspect_shows_the_damping_the_run_used(tmp_path, capsys):
    run = tmp_path / "results" / "tiny"
    dense = curvature(run / "dense" / "curvature.h5")
    rows, note = inspect_json(capsys, dense)
    assert {(r["G_damping"], r["A_damping"]) for r in rows} == {(0.1, 0.01)}
    assert "damping_g 0.1 (the default; no prune manifest that read this file records it)" in note
    # shot 1 of an experiment read the dense curvature with its own damping
    used = prune_manifest(run / "u50" / "shot-1" / "model", dense, damping_g=1.0, damping_a=0.05)
    rows, note = inspect_json(capsys, dense)
    assert {(r["G_damping"], r["A_damping"]) for r in rows} == {(1.0, 0.05)}
    assert f"damping_g 1.0 (recorded by {used})" in note
    assert f"damping_a 0.05 (recorded by {used})" in note
    # the condition numbers are those of that damping; a flag still overrides
    assert rows == inspect_json(capsys, dense, "--damping-g", 1.0, "--damping-a", 0.05)[0]
    rows, note = inspect_json(capsys, dense, "--damping-g", 0.3)
    assert {(r["G_damping"], r["A_damping"]) for r in rows} == {(0.3, 0.05)}
    assert "damping_g 0.3 (--damping-g)" in note
    # a second experiment read it with another damping of G: no single value, so the default
    other = prune_manifest(run / "u50-dg0.01" / "scratch" / "shot-1" / "model", dense,
                           damping_g=0.01, damping_a=0.05)
    rows, note = inspect_json(capsys, dense)
    assert {(r["G_damping"], r["A_damping"]) for r in rows} == {(0.1, 0.05)}
    assert (f"damping_g 0.1 (the default; the shots that read this file used 0.01 in {other}, "
            f"1.0 in {used}: choose one with --damping-g)") in note


def test_inspect_ignores_shots_that_read_another_version_of_the_file(tmp_path, capsys):
    """A later shot's curvature with its own model beside it; rebuilt since that shot read it."""
    shot = tmp_path / "results" / "tiny" / "u50" / "shot-2"
    h5 = curvature(shot / "curvature.h5")
    prune_manifest(shot / "model", h5, damping_g=1.0)
    assert inspect_json(capsys, h5)[0][0]["G_damping"] == 1.0
    curvature(h5, layers=(1, 2))  # rebuilt: the shot's recorded sha256 no longer matches
    rows, note = inspect_json(capsys, h5)
    assert rows[0]["G_damping"] == 0.1 and "damping_g 0.1 (the default;" in note
