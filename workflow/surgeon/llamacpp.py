"""GGUF files scored and quantized by llama.cpp itself, through the optional llama-cpp-python.

`perplexity` runs each evaluation window through llama.cpp and takes the same statistic as
evaluate.perplexity (exp of the mean over windows of the window's mean next-token NLL) from
llama.cpp's own logits, so a file can be checked against our evaluation of the weights it was
written from. `quantize` is llama-quantize (llama.cpp's quantizer, optionally with an importance
matrix made from our curvature's A factors) of an F32 file, the baseline our exports are
compared with. llama-cpp-python builds llama.cpp from
source (`make llama-cpp`, several minutes), so it is not part of the default install.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import SurgeonError


def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise SurgeonError("scoring in llama.cpp needs the optional llama-cpp-python package "
                           "(make llama-cpp)") from None
    return llama_cpp


def window_logits(gguf: Path, windows: torch.Tensor, threads: int | None = None):
    """llama.cpp's logits (float64, tokens x vocab) of each window, one window at a time."""
    lib = llama_cpp()
    threads = threads or os.cpu_count() or 1
    llm = lib.Llama(model_path=str(gguf), n_ctx=windows.shape[1], n_batch=windows.shape[1],
                    logits_all=True, n_threads=threads, verbose=False, seed=0)
    try:
        for ids in windows.tolist():
            llm.reset()
            llm.eval(ids)
            yield np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def perplexity(gguf: Path, windows: torch.Tensor, threads: int | None = None) -> float:
    """evaluate.perplexity's statistic from llama.cpp's logits of the file."""
    from .evaluate import perplexity_of, window_nll

    return perplexity_of([window_nll(torch.from_numpy(logits)[None], ids[None])
                          for ids, logits in zip(windows, window_logits(gguf, windows, threads))])


def importance_matrix(curvature, names: dict[str, str]) -> dict[str, np.ndarray]:
    """llama.cpp's importance matrix from our curvature file: per weight matrix, the mean
    squared activation of each input column, which is the diagonal of its K-FAC A = E[a a^T]
    (the bias column dropped) -- what llama-imatrix accumulates over its calibration text.
    `names` maps decoder-Linear names to GGUF tensor names."""
    return {gguf_name: np.ascontiguousarray(
                curvature[layer]["A"][()].diagonal()[: curvature[layer].attrs["weight_shape"][1]],
                dtype=np.float32)
            for layer, gguf_name in names.items()}


def quantize(source: Path, out: Path, file_type: str, threads: int | None = None,
             importance: dict[str, np.ndarray] | None = None) -> None:
    """llama-quantize `source` (an F32/F16 .gguf) to `file_type` (ggml_plan.FILE_TYPES),
    with `importance` ({GGUF tensor name: per-column importance}) as its importance matrix."""
    import ctypes

    from .ggml_plan import FILE_TYPES

    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.nthread = threads or os.cpu_count() or 1
    if importance:
        keep = [(name.encode(), np.ascontiguousarray(v, dtype=np.float32))
                for name, v in importance.items()]  # alive until the call returns
        entries = (lib.llama_model_imatrix_data * (len(keep) + 1))()
        for entry, (name, values) in zip(entries, keep):
            entry.name = name
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = len(values)
        entries[len(keep)].name = None  # the array ends with a null name
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lib.llama_model_imatrix_data))
    status = lib.llama_model_quantize(str(source).encode(), str(out).encode(),
                                      ctypes.byref(params))
    if status != 0:
        raise SurgeonError(f"llama.cpp could not quantize {source} to {file_type} ({status})")
