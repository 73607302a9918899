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
    experiments' and this run's report figures' (not those of experiments no longer
    configured, nor of another run_name's report).
    """
    model = f"benchmarks/{MODEL}"
    dirs = [model, f"{model}/dense", REPORT_BENCHMARKS]
    return dirs + [f"{model}/{name}" for name in config["experiments"]]


def benchmarked_outputs():
    """Every target of the run except the benchmark table and plot themselves."""
    return [f for f in final_outputs() if f not in BENCHMARK_REPORT]
