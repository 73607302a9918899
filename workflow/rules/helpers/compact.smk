# Helpers of the rules in rules/compact.smk (input functions and params).


def final_or_recovered_model(wildcards):
    """The recovered model when the experiment recovers, else its final shot."""
    if experiment(wildcards.experiment)["recover"]:
        return f"results/{wildcards.model}/{wildcards.experiment}/recovered/model"
    return final_model(wildcards)
