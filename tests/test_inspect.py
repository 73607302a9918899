"""surgeon inspect: model order, csv/json, damaged factors flagged, no traceback into a pipe."""

import json
import subprocess
import sys

import torch

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
