# Helpers of the rules in rules/zeroshot.smk (input functions and params).


def zeroshot_task_inputs(wildcards):
    """The cloze task folder and the files of the requested project tasks (an edit re-runs)."""
    files = []
    for name in config["zeroshot"]["tasks"]:
        folder = PROJECT_TASKS / name
        if name == CLOZE_TASK:
            files.append(f"results/{wildcards.model}/data/cloze")
        elif (folder / f"{name}.yaml").is_file():
            files += [str(p) for p in sorted(folder.iterdir()) if p.is_file()]
    return files


def zeroshot_include(wildcards, input):
    """--include folders: resources/tasks and the cloze task folder when it is requested."""
    folders = [str(PROJECT_TASKS)] if PROJECT_TASKS.is_dir() else []
    if CLOZE_TASK in config["zeroshot"]["tasks"]:
        folders.append(f"results/{wildcards.model}/data/cloze")
    return " ".join(folders)
