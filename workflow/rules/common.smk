# Helpers, config validation and wildcard constraints shared by every rule.
from snakemake.utils import min_version, validate

min_version("9.0")


validate(config, "../schemas/config.schema.yaml", set_default=True)


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    shot=r"\d+",


MODEL = config["model"]["name"]
CURVATURE_METHODS = {"llm-surgeon", "k-obd", "l-obd", "sparsegpt", "wanda"}
CALIBRATION_METHODS = {"llm-pruner"}  # methods that read calibration windows in prune


def experiment(name):
    """An experiment's settings; damping of G defaults to 0.01 structured, 0.1 otherwise."""
    exp = config["experiments"][name]
    damping_g = 0.01 if exp["structure"] == "structured" else 0.1
    return {"damping_g": damping_g, **exp}


def setting(key):
    """Input function for params: one value of the experiment named by the wildcard."""
    return lambda wildcards: experiment(wildcards.experiment)[key]


def shot_path(wildcards, shot, name):
    """results/<model>/<experiment>/shot-<k>/<name>"""
    return "results/{}/{}/shot-{}/{}".format(
        wildcards.model, wildcards.experiment, shot, name
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


def prune_inputs(wildcards):
    exp = experiment(wildcards.experiment)
    inputs = {"model": previous_model(wildcards)}
    if exp["method"] in CURVATURE_METHODS:
        inputs["curvature"] = curvature_of_shot(wildcards)
    if exp["method"] in CALIBRATION_METHODS or exp["lora_steps"] > 0:
        inputs["calibration"] = (
            f"results/{wildcards.model}/data/calibration.safetensors"
        )
    return inputs


def optional_inputs(wildcards, input):
    """--curvature / --calibration for the inputs this shot has."""
    return " ".join(
        f"--{k} {input[k]}" for k in ("curvature", "calibration") if k in input.keys()
    )


def evaluated_shots(name):
    exp = experiment(name)
    if exp["evaluate_shots"] == "final":
        return [exp["shots"]]
    return list(range(1, exp["shots"] + 1))


def eval_files():
    files = [f"results/{MODEL}/dense/eval/dense.json"]
    for name in config["experiments"]:
        files += [
            f"results/{MODEL}/{name}/eval/shot-{k}.json" for k in evaluated_shots(name)
        ]
    return files


def evaluated_model(wildcards):
    if wildcards.stage == "dense":
        return f"results/{wildcards.model}/dense/model"
    return f"results/{wildcards.model}/{wildcards.experiment}/{wildcards.stage}/model"


def eval_labels(wildcards):
    """Method, structure, target and shot recorded beside the measurements."""
    if wildcards.stage == "dense":
        return "--experiment dense --method none --structure none --target 0 --shot 0"
    exp = experiment(wildcards.experiment)
    shot = wildcards.stage.removeprefix("shot-")
    return (
        f"--experiment {wildcards.experiment} --method {exp['method']} "
        f"--structure {exp['structure']} --target {exp['target']} --shot {shot}"
    )


def final_outputs():
    return ["results/report/summary.csv", "results/report/summary.md"] + eval_files()
