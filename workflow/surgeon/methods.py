"""The one registry of pruning methods and the structures each supports.

The prune stage dispatches on it, the workflow's rules derive from it which inputs a shot reads
(workflow/rules/common.smk), and a test holds the config schema's method x structure rules to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SurgeonError

STRUCTURES = ("unstructured", "2:4", "structured")
NM_DENSITY = 0.5  # 2:4 removes half of every chosen block


@dataclass(frozen=True)
class Method:
    curvature: bool  # reads the shot's curvature file (unless it runs sequentially)
    scope: str  # which costs compete: global, layer or row (see selection.py)
    structures: tuple[str, ...]
    update: str = "none"  # what happens to the kept weights: see UPDATES
    units: tuple[str, ...] = ("rows-columns",)  # structured units it removes; first = default
    calibration: bool = False  # reads calibration windows for its own gradients
    sequential: bool = False  # runs layer by layer by default (sequential: true)


UNITS = {
    "coupled": "MLP channels and attention groups (a kv head with its query heads): exactly "
               "what compaction removes",
    "rows-columns": "single rows and columns of every Linear (the LLM Surgeon paper's)",
}

COUPLED_COSTS = {
    "output": "a unit costed on the output layer its removal acts in (down_proj / o_proj "
              "columns), chosen by one global greedy with exact downdates",
    "summed": "the row and column costs of every layer a unit touches, summed, each layer "
              "updated (the earlier version, for comparison)",
}

UPDATES = {
    "obs": "optimal correlated update under G (x) A, damped by damping_g and damping_a",
    "sweep": "SparseGPT's column sweep under A, damped by damping_a",
    "layer-obs": "layer by layer, OBS under A alone on each group's output layer (SlimGPT)",
    "none": "removed weights are zeroed, the others kept",
}

METHODS = {
    "llm-surgeon": Method(True, "global", STRUCTURES, update="obs",
                          units=("coupled", "rows-columns")),
    "k-obd": Method(True, "global", STRUCTURES),
    "l-obd": Method(True, "global", STRUCTURES),
    "sparsegpt": Method(True, "layer", ("unstructured", "2:4"), update="sweep", sequential=True),
    "wanda": Method(True, "row", ("unstructured", "2:4"), sequential=True),
    "magnitude": Method(False, "layer", STRUCTURES),
    "llm-pruner": Method(False, "layer", ("structured",), units=("coupled",), calibration=True),
    "slimgpt": Method(False, "layer", ("structured",), update="layer-obs", units=("coupled",),
                      calibration=True),
}


DAMPING_A_DEFAULT = 0.01  # relative damping of A (the schema's default too)


def damping_g_default(structure: str) -> float:
    """Relative damping of G when an experiment sets none (docs/algorithms.md §1)."""
    return 0.01 if structure == "structured" else 0.1


def check_method(method: str, structure: str, fraction: float,
                 units: str | None = None) -> Method:
    """The method's entry, or a one-line error naming what is not supported."""
    if method not in METHODS:
        raise SurgeonError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    m = METHODS[method]
    if structure not in m.structures:
        raise SurgeonError(f"method {method} does not support structure '{structure}'; "
                           f"it supports: {', '.join(m.structures)}")
    if units is not None and structure == "structured" and units not in m.units:
        raise SurgeonError(f"method {method} removes structured units {', '.join(m.units)}, "
                           f"not '{units}'")
    if structure == "2:4" and fraction > NM_DENSITY:
        raise SurgeonError(f"2:4 removes at most {NM_DENSITY} of the weights, not {fraction}")
    return m
