"""What evaluate records about a model comes from the manifests of its folder and its sources."""

import json

from surgeon.artifacts import prune_settings


def _folder(path, stage, config, source=None):
    path.mkdir(parents=True)
    inputs = {"model": {"path": str(source), "sha256": "x"}} if source else {}
    (path / "manifest.json").write_text(json.dumps({"stage": stage, "config": config,
                                                    "inputs": inputs}))
    return path


def test_prune_settings_follow_recovered_compacted_and_quantized_folders_back(tmp_path):
    dense = _folder(tmp_path / "dense", "import-model", {"source": "x"})
    shot = _folder(tmp_path / "shot-2", "prune",
                   {"method": "llm-surgeon", "structure": "structured", "target": 0.2,
                    "shot": 2, "shots": 2}, dense)
    recovered = _folder(tmp_path / "recovered", "recover", {"steps": 3}, shot)
    compact = _folder(tmp_path / "compact", "compact", {}, recovered)
    quantized = _folder(tmp_path / "q", "quantize", {"bits": 4}, compact)
    for folder in (shot, recovered, compact, quantized):
        settings = prune_settings(folder)
        assert (settings["method"], settings["target"], settings["shots"]) == \
            ("llm-surgeon", 0.2, 2)
    assert prune_settings(dense) == {}  # the dense model: nothing was pruned
    assert prune_settings(tmp_path / "missing") == {}
