"""Size and perplexity of a Q4_0 `.gguf` of a model folder, with its embedding as the float32
checkpoint has it and rounded to Q8_0 (what the quantize stage and the export now do).

  python benchmarks/gguf_size.py                  # the default run's dense model, RTN Q4_0
  python benchmarks/gguf_size.py --model results/smollm2-135m/llm-surgeon-unstructured-50/recovered/model
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from surgeon.data import load_windows
from surgeon.evaluate import perplexity
from surgeon.gguf_export import export_gguf
from surgeon.masks import load_mask
from surgeon.models import load_model, load_tokenizer
from surgeon.prune import decoder_weights
from surgeon.quantize import Grid, quantize_embeddings, quantize_model

DATA = Path("results/smollm2-135m/data")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="results/smollm2-135m/dense/model", help="model folder")
    p.add_argument("--evaluation", default=str(DATA / "evaluation.safetensors"))
    p.add_argument("--ood", default=str(DATA / "ood.safetensors"))
    args = p.parse_args()

    model, tokenizer = load_model(args.model, "cpu"), load_tokenizer(args.model)
    windows = [load_windows(path)[0] for path in (args.evaluation, args.ood)]
    removed = load_mask(args.model, decoder_weights(model))
    codes = quantize_model(model, "rtn", Grid(4, 32, True), removed, progress=False)
    before = [perplexity(model, w, progress=False) for w in windows]
    print(f"RTN Q4_0, embedding as stored:   ppl {before[0]:.3f} / ood {before[1]:.3f}")
    quantize_embeddings(model)
    after = [perplexity(model, w, progress=False) for w in windows]
    print(f"RTN Q4_0, embedding Q8_0:        ppl {after[0]:.3f} / ood {after[1]:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.gguf"
        info = export_gguf(model, tokenizer, codes, out)
        print(f"model.gguf: {out.stat().st_size} bytes; weights by storage: {info['weights']}")


if __name__ == "__main__":
    main()
