# Config validation, the experiment table, shot paths and the lists of final outputs, shared
# by every rule file; the helpers of one stage live at the top of that stage's rule file.
import glob
import json
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from surgeon.config_errors import cause, explain, normalise
from surgeon.families import COMPACT_MODEL_TYPES, CONV1D_MODEL_TYPES
from surgeon.ggml_plan import ARCHITECTURES as GGUF_ARCHITECTURES
from surgeon.methods import METHODS, damping_g_default

min_version("9.0")


for warning in normalise(config):
    logger.warning(warning)
try:
    validate(config, "../schemas/config.schema.yaml", set_default=True)
except WorkflowError as err:
    if cause(err) is None:
        raise
    # one line: Snakemake's own message prints the whole schema and config
    raise ValueError(explain(cause(err))) from None


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    shot=r"\d+",


MODEL = config["model"]["name"]
# one report folder per config (run_name), so the reports of different configs do not
# overwrite each other; "" (the default) is results/report itself
REPORT = str(Path("results/report", config["run_name"]))
REPORT_LOGS = str(Path("logs/report", config["run_name"]))
REPORT_BENCHMARKS = str(Path("benchmarks/report", config["run_name"]))
# which inputs a shot reads, from the package's one registry of methods
CURVATURE_METHODS = {n for n, m in METHODS.items() if m.curvature}
CALIBRATION_METHODS = {n for n, m in METHODS.items() if m.calibration}
SEQUENTIAL_METHODS = {n for n, m in METHODS.items() if m.sequential}


# Cores per job. The compression chain (curvature, prune, recovery, quantization) takes every
# core and runs first (priority), since every later job waits on it. Jobs that only read a
# model take half, so two run side by side: on 2 cores a short evaluation is mostly Python
# start-up and model loading, single-threaded anyway. A job that measures tokens/s keeps every
# core, so each model's speed is measured alone, on the same cores.
CHAIN_PRIORITY = 10


def half_cores(wildcards=None):
    return max(1, (workflow.cores or 1) // 2)


def experiment(name):
    """An experiment's settings; damping of G defaults by structure (surgeon.methods)."""
    exp = config["experiments"][name]
    defaults = {
        "damping_g": damping_g_default(exp["structure"]),
        "units": METHODS[exp["method"]].units[0],
    }
    return {**defaults, **exp}


def check_units():
    """A method removes only the structured units it knows (surgeon.methods)."""
    for name, exp in config["experiments"].items():
        known = METHODS[exp["method"]].units
        if exp["structure"] == "structured" and exp.get("units", known[0]) not in known:
            raise ValueError(
                f"experiments.{name}.units: {exp['method']} removes {', '.join(known)},"
                f" not {exp['units']}"
            )


def check_keep_shots():
    """Cross-field checks the schema cannot express: kept shots and quantizations exist."""
    for name, exp in config["experiments"].items():
        unknown = [q for q in exp["quantize"] if q not in config["quantization"]]
        if unknown:
            raise ValueError(
                f"experiments.{name}.quantize: {unknown} not defined under quantization"
            )
        keep = exp["keep_shots"]
        beyond = [k for k in keep if k > exp["shots"]] if isinstance(keep, list) else []
        if beyond:
            raise ValueError(
                f"experiments.{name}.keep_shots: {beyond} beyond its {exp['shots']} shots"
            )


def check_qat_sources():
    """A qat_from entry names a post-training quantization (method rtn or gptq)."""
    for name, spec in config["quantization"].items():
        base = config["quantization"].get(spec.get("qat_from"), {"method": None})
        if "qat_from" in spec and "method" not in base:
            raise ValueError(
                f"quantization.{name}.qat_from: '{spec['qat_from']}' is not a quantization"
                " with a method (rtn, gptq) defined under quantization"
            )


check_keep_shots()
check_qat_sources()
check_units()


def source_files(source):
    """The local files a model or text source is read from, as inputs of the rules that read
    it: editing one makes Snakemake rerun them (by mtime). Embedded texts and models, hub ids
    and missing paths give none (the stage names a missing path); a model folder gives its
    files, hidden ones (download caches) left out."""
    if not source or source.startswith("embedded:"):
        return []
    if any(c in source for c in "*?["):
        return sorted(glob.glob(source))
    path = Path(source)
    if path.is_dir():
        files = [p.relative_to(path) for p in path.rglob("*") if p.is_file()]
        return sorted(
            str(path / f) for f in files if not any(x.startswith(".") for x in f.parts)
        )
    return [source] if path.is_file() else []


def name_pattern(names):
    """Regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


PTQ_NAMES = name_pattern(q for q, s in config["quantization"].items() if "method" in s)
QAT_NAMES = name_pattern(
    q for q, s in config["quantization"].items() if "qat_from" in s
)


def setting(key):
    """Input function for params: one value of the experiment named by the wildcard."""
    return lambda wildcards: experiment(wildcards.experiment)[key]


def kept_shots(name):
    """Shots whose model (and curvature) stay on disk; the final shot always does."""
    exp = experiment(name)
    keep = exp["keep_shots"]
    if keep == "all":
        return set(range(1, exp["shots"] + 1))
    return {exp["shots"]} | (set() if keep == "final" else set(keep))


def shot_path(wildcards, shot, name):
    """results/<model>/<experiment>/shot-<k>/<name> for a kept shot; a shot that is not kept
    lives under scratch/ as a temp() file, deleted once the shots after it have read it.
    """
    scratch = "" if int(shot) in kept_shots(wildcards.experiment) else "scratch/"
    return "results/{}/{}/{}shot-{}/{}".format(
        wildcards.model, wildcards.experiment, scratch, shot, name
    )


def previous_model(wildcards):
    """Shot k reads the model of shot k-1; shot 1 reads the imported dense model."""
    shot = int(wildcards.shot)
    if shot == 1:
        return f"results/{wildcards.model}/dense/model"
    return shot_path(wildcards, shot - 1, "model")


def curvature_of_shot(wildcards):
    """Shot 1 uses the dense model's curvature (shared by all experiments); shot k its own."""
    if int(wildcards.shot) == 1:
        return f"results/{wildcards.model}/dense/curvature.h5"
    return shot_path(wildcards, wildcards.shot, "curvature.h5")


def evaluated_shots(name):
    exp = experiment(name)
    if exp["evaluate_shots"] == "final":
        return [exp["shots"]]
    if exp["evaluate_shots"] == "kept":
        return sorted(kept_shots(name))
    return list(range(1, exp["shots"] + 1))


def recovered_experiments():
    return [name for name, exp in config["experiments"].items() if exp["recover"]]


def eval_files():
    files = [f"results/{MODEL}/dense/eval/dense.json"]
    for name in config["experiments"]:
        files += [
            f"results/{MODEL}/{name}/eval/shot-{k}.json" for k in evaluated_shots(name)
        ]
    files += [
        f"results/{MODEL}/{name}/eval/recovered.json"
        for name in recovered_experiments()
    ]
    files += [
        f"results/{MODEL}/{name}/eval/compact.json" for name in compacted_experiments()
    ]
    for name in config["experiments"]:
        files += [
            f"results/{MODEL}/{name}/eval/{q}.json" for q in quantized_stages(name)
        ]
    return files


def final_model(wildcards):
    """The model of an experiment's last shot (what recovery starts from)."""
    return shot_path(wildcards, experiment(wildcards.experiment)["shots"], "model")


def recovery_targets():
    targets = config["recovery"]["targets"]
    return targets if targets == "all" else ",".join(targets)


def compacted_experiments():
    return [name for name, exp in config["experiments"].items() if exp["compact"]]


def quantized_stages(name):
    return [f"quantized-{q}" for q in experiment(name)["quantize"]]


def quantization_grid(quant):
    """The entry that sets a quantization's grid: itself, or the one its qat_from names."""
    spec = config["quantization"][quant]
    return config["quantization"][spec["qat_from"]] if "qat_from" in spec else spec


def source_model_type(source):
    """transformers model_type of the model source: a local folder's config.json, llama for
    the embedded model; None where the workflow cannot tell before loading it (hub id, .gguf).
    """
    if source.startswith("embedded:"):
        return "llama"
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type")
    return None


SOURCE_MODEL_TYPE = source_model_type(config["model"]["source"])


def check_compaction():
    """`compact: true` only for a family compaction can cut, known from the source's
    config.json (a hub id or .gguf is checked by the compact stage itself)."""
    family = (SOURCE_MODEL_TYPE or "").removesuffix("-compact")
    if not family or family in COMPACT_MODEL_TYPES:
        return
    for name, exp in config["experiments"].items():
        if exp.get("compact"):
            raise ValueError(
                f"experiments.{name}.compact: compaction supports"
                f" {', '.join(COMPACT_MODEL_TYPES)} models, not {SOURCE_MODEL_TYPE}"
                " (the source's model_type); set compact: false"
            )


check_compaction()


def quantization_exports(name, quant, model=MODEL):
    """A .gguf for a llama.cpp file type (gguf_type, or the Q4_0/Q5_0/Q8_0 grid) of a family
    llama.cpp reads from us, a compressed-tensors folder for one 4- or 8-bit grid for all
    layers (not of GPT-2: transformers would not load its Conv1D layers from it)."""
    spec = quantization_grid(quant)
    folder = f"results/{model}/{name}/quantized/{quant}"
    gguf_type = spec.get("gguf_type")
    on_llama_cpp_grid = spec["symmetric"] and spec["group_size"] == 32
    gguf_family = SOURCE_MODEL_TYPE in (None, *GGUF_ARCHITECTURES)
    files = []
    if (gguf_type or on_llama_cpp_grid) and gguf_family:
        files.append(f"{folder}/model.gguf")
    ct_grid = gguf_type in ("Q4_0", "Q8_0") or (
        not gguf_type and spec["bits"] in (4, 8)
    )
    if ct_grid and SOURCE_MODEL_TYPE not in CONV1D_MODEL_TYPES:
        files.append(f"{folder}/compressed-tensors")
    return files


def export_files():
    return [
        f
        for name in config["experiments"]
        for q in experiment(name)["quantize"]
        for f in quantization_exports(name, q)
    ]


def spectra_files():
    """Spectra of the dense curvature (read by every shot 1) and of each later shot's own."""
    curved = [
        n for n in config["experiments"] if experiment(n)["method"] in CURVATURE_METHODS
    ]
    files = [f"results/{MODEL}/dense/spectra.json"] if curved else []
    for name in curved:
        shots = range(2, experiment(name)["shots"] + 1)
        files += [f"results/{MODEL}/{name}/spectra/shot-{k}.json" for k in shots]
    return files


def report_figures():
    figures = [
        f"{REPORT}/perplexity_vs_sparsity.png",
        f"{REPORT}/perplexity_vs_shots.png",
        f"{REPORT}/layer_sparsity.png",
    ]
    figures += [f"{REPORT}/curvature_spectra.png"] if spectra_files() else []
    return figures + (
        [f"{REPORT}/recovery_loss.png"] if recovered_experiments() else []
    )


# made from the benchmark files of every other job, so they come last (figures.smk)
BENCHMARK_REPORT = [f"{REPORT}/benchmarks.{ext}" for ext in ("csv", "html", "png")]


PROJECT_TASKS = Path(workflow.basedir) / "resources" / "tasks"
CLOZE_TASK = "surgeon_cloze"


def zeroshot_stages(name):
    """Stages of experiment `name` scored zero-shot (zeroshot.stages; opt out per experiment)."""
    if not config["zeroshot"]["tasks"] or not experiment(name)["zeroshot"]:
        return []
    exp, wanted = experiment(name), config["zeroshot"]["stages"]
    stages = [f"shot-{exp['shots']}"] if "final" in wanted else []
    stages += ["recovered"] if "recovered" in wanted and exp["recover"] else []
    stages += ["compact"] if "compact" in wanted and exp["compact"] else []
    stages += quantized_stages(name) if "quantized" in wanted else []
    return stages


def zeroshot_files():
    files = []
    if config["zeroshot"]["tasks"] and "dense" in config["zeroshot"]["stages"]:
        files.append(f"results/{MODEL}/dense/zeroshot/dense.json")
    for name in config["experiments"]:
        files += [
            f"results/{MODEL}/{name}/zeroshot/{s}.json" for s in zeroshot_stages(name)
        ]
    return files


def final_outputs():
    return (
        [f"{REPORT}/summary.csv", f"{REPORT}/summary.md"]
        + [f"{REPORT}/summary.html"]
        + eval_files()
        + zeroshot_files()
        + export_files()
        + BENCHMARK_REPORT
    )


# the helpers of each stage's rules, one file per rule file
include: "helpers/prune.smk"
include: "helpers/recover.smk"
include: "helpers/compact.smk"
include: "helpers/quantize.smk"
include: "helpers/evaluate.smk"
include: "helpers/zeroshot.smk"
include: "helpers/figures.smk"
