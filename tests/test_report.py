"""summary rows: llama.cpp's perplexity columns appear only when a row measured them."""

import json

from surgeon.report import COLUMNS, report_columns, summary_rows, to_csv


def eval_json(path, **extra):
    path.write_text(json.dumps({
        "model": "m", "experiment": "e", "method": "gptq", "structure": "unstructured",
        "target": 0.5, "shot": 1, "sparsity": 0.5, "params": 10, "nonzero_params": 5,
        "size_bytes": 2**20, "ppl": 12.34567, **extra}))
    return path


def test_llama_cpp_columns_only_when_measured(tmp_path):
    plain = eval_json(tmp_path / "a.json", stage="shot-1")
    scored = eval_json(tmp_path / "b.json", stage="quantized-q", ppl_llamacpp=12.51234,
                       ppl_ood_llamacpp=30.1)
    rows = summary_rows([plain])
    assert report_columns(rows) == COLUMNS
    rows = summary_rows([plain, scored])
    columns = report_columns(rows)
    assert columns == COLUMNS + ["ppl_llamacpp", "ppl_ood_llamacpp"]
    csv = to_csv(rows, columns).splitlines()
    assert csv[0].endswith(",ppl_llamacpp,ppl_ood_llamacpp")
    assert csv[1].endswith(",,") and csv[2].endswith(",12.512,30.1")
