"""curvature.h5: one group per layer with datasets `A`, `G` and attributes; readable with h5py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from .artifacts import rebuild_hint
from .errors import SurgeonError

FORMAT_VERSION = 1


# decoder Linears that read the input of a sibling (Llama, OPT): their A is that sibling's
SAME_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def curvature_bytes(layers: dict) -> int:
    """Bytes of the float32 A and G that write_curvature stores for these decoder Linears
    (name -> nn.Linear, shapes only: a meta-device model will do), A once per input: the
    estimate finds the shared inputs at run time, here they are known by name (SAME_INPUT)."""
    total = 0
    for name, layer in layers.items():
        parent, _, local = name.rpartition(".")
        shared = f"{parent}.{SAME_INPUT.get(local)}" in layers
        c = layer.in_features + (layer.bias is not None)
        total += 4 * (layer.out_features**2 + (0 if shared else c * c))
    return total


def write_curvature(path: Path, factors: dict, meta: dict, layer_meta: dict) -> None:
    """Write factors; A matrices identical to an earlier layer's (q/k/v, gate/up) are hard links.

    HDF5 writes through a Python file object: its own writer segfaults when closing a file whose
    write failed (full disk, HDF5 2.0); through Python the failure is an OSError with its errno.
    """
    with open(path, "w+b") as raw, h5py.File(raw, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        for k, v in meta.items():
            f.attrs[k] = str(v) if isinstance(v, str) else v  # str subclasses (TorchVersion)
        seen_a: list[tuple[str, torch.Tensor]] = []
        for name, (A, G) in factors.items():
            grp = f.create_group(name)
            # q/k/v and gate/up read the same input: compare with the previous unique A only
            link = next((n for n, a in seen_a[-1:] if a.shape == A.shape and torch.equal(a, A)), None)
            if link is not None:
                grp["A"] = f[f"{link}/A"]
                grp.attrs["A_shared_with"] = link
            else:
                grp.create_dataset("A", data=A.numpy().astype(np.float32))
                seen_a.append((name, A))
            grp.create_dataset("G", data=G.numpy().astype(np.float32))
            grp.attrs["layer"] = name
            for k, v in layer_meta[name].items():
                grp.attrs[k] = v


def open_curvature(path: str | Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise SurgeonError(f"curvature file not found: {path}") from None
    except OSError as err:
        raise SurgeonError(
            f"curvature file {path} is corrupt or truncated ({str(err).splitlines()[0]}); "
            + rebuild_hint(path)
        ) from None
    if f.attrs.get("format_version") != FORMAT_VERSION:
        f.close()
        raise SurgeonError(f"{path} is not a curvature file of this tool (format_version)")
    return f


def read_factors(f: h5py.File, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in f:
        raise SurgeonError(f"layer {name} missing from curvature file {f.filename}")
    try:
        return torch.from_numpy(f[name]["A"][()]), torch.from_numpy(f[name]["G"][()])
    except OSError as err:
        raise SurgeonError(
            f"cannot read layer {name} of {f.filename} (corrupt: {str(err).splitlines()[0]}); "
            + rebuild_hint(f.filename)
        ) from None
