# Helpers of the rules in rules/recover.smk (input functions and params).


def recovery_source():
    source = config["recovery"]["source"]
    return config["data"]["source"] if source == "calibration" else source


TEACHER = "results/{model}/data/teacher_logits.safetensors"


def recovery_teacher(wildcards):
    """The dense model's top-k logits when the experiment's recovery distils."""
    if experiment(wildcards.experiment)["recover_objective"] == "lm":
        return []
    return TEACHER.format(model=wildcards.model)


def teacher_option(wildcards, input):
    return f"--teacher {input.teacher}" if input.teacher else ""


def lora_options(objective):
    """The recovery block as `surgeon recover/qat` options (LoRA, objective, checkpoint)."""
    r = config["recovery"]
    return (
        f"--rank {r['rank']} --alpha {r['alpha']} --targets {recovery_targets()}"
        f" --steps {r['steps']} --lr {r['lr']} --batch-size {r['batch_size']}"
        f" --grad-accum {r['grad_accum']} --seed {r['seed']}"
        f" --checkpoint-every {r['checkpoint_every']} --objective {objective}"
        f" --kd-weight {r['kd_weight']} --temperature {r['kd_temperature']}"
    )
