# Helpers of the rules in rules/figures.smk (input functions and params).


def layer_sparsity_files():
    return [
        f"results/{MODEL}/{name}/layer_sparsity.tsv" for name in config["experiments"]
    ]


def recovery_losses():
    return [
        f"results/{MODEL}/{name}/recovered/loss.tsv" for name in recovered_experiments()
    ]


def benchmark_dirs():
    """Benchmark folders of this run: the model's, the dense model's, this config's
    experiments' and the report figures' (those of experiments no longer configured are not).
    """
    model = f"benchmarks/{MODEL}"
    dirs = [model, f"{model}/dense", "benchmarks/report"]
    return dirs + [f"{model}/{name}" for name in config["experiments"]]


def benchmarked_outputs():
    """Every target of the run except the benchmark table and plot themselves."""
    return [f for f in final_outputs() if f not in BENCHMARK_REPORT]
