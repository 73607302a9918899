"""Zero-shot accuracy through lm-eval (docs/algorithms.md §9) of a model held in memory.

Tasks come from the project's own task folders (resources/tasks, the cloze task built from the
evaluation text) and from lm-eval's registry (boolq, piqa, ... when their data sets can be
reached). A registered task that cannot be loaded (data set offline, not cached) is skipped with
its reason; a name that is registered nowhere is an error, since it is a typo in the config.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import SurgeonError

BOOTSTRAP_ITERS = 1000  # only metrics that are not means use it; acc/acc_norm stderr is exact


def offline_requested() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (HF_ENDPOINT) accepts a connection: without this check `datasets` retries
    for about 20 s per task before it gives up."""
    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def go_offline() -> None:
    """Offline mode for huggingface_hub and datasets, also when they are already imported."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:
            for attr in attrs:
                setattr(sys.modules[module], attr, True)


def resolve_data_files(config: dict, base: Path) -> dict:
    """A copy of a task config whose relative `dataset_kwargs.data_files` are made relative to
    `base` (the YAML's folder): lm-eval would read them relative to the working directory."""
    config = copy.deepcopy(config)
    files = config.get("dataset_kwargs", {}).get("data_files")

    def absolute(p):
        return p if Path(p).is_absolute() else str(Path(base) / p)

    if isinstance(files, str):
        config["dataset_kwargs"]["data_files"] = absolute(files)
    elif isinstance(files, list):
        config["dataset_kwargs"]["data_files"] = [absolute(p) for p in files]
    elif isinstance(files, dict):
        config["dataset_kwargs"]["data_files"] = {
            split: [absolute(p) for p in ps] if isinstance(ps, list) else absolute(ps)
            for split, ps in files.items()}
    return config


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text[:300]}"


def task_manager(names: list[str], include: list[str]):
    """(TaskManager, hub status): the project folders alone when they hold every task (indexing
    lm-eval's ~15k built-in tasks takes about 10 s), else with the built-ins, offline when the
    hub cannot be reached."""
    from lm_eval.tasks import TaskManager

    missing = [p for p in include if not Path(p).is_dir()]
    if missing:
        raise SurgeonError(f"task folder not found: {', '.join(missing)}")
    local = TaskManager(include_path=include or None, include_defaults=False)
    if all(n in local.all_tasks for n in names):
        return local, "not needed"
    hub = "reachable" if hub_reachable() else "unreachable: offline mode"
    if hub != "reachable":
        go_offline()
    return TaskManager(include_path=include or None), hub


def load_tasks(manager, names: list[str], include: list[str]) -> tuple[dict, list[dict]]:
    """({task name: lm-eval Task}, [{task, reason}] for tasks that could not be loaded)."""
    import lm_eval

    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise SurgeonError(
            f"unknown zero-shot task(s) {', '.join(unknown)}: not in {', '.join(include) or '-'}"
            f" nor among lm-eval {lm_eval.__version__}'s tasks")
    roots = [Path(p).resolve() for p in include]
    tasks, skipped = {}, []
    for name in names:
        entry = manager.task_index[name]
        spec = name
        yaml_path = Path(entry.yaml_path).resolve() if entry.yaml_path else None
        if yaml_path is not None and any(r in yaml_path.parents for r in roots):
            from lm_eval.tasks._yaml_loader import load_yaml

            spec = resolve_data_files(load_yaml(yaml_path, resolve_func=True), yaml_path.parent)
        try:
            tasks.update(manager.load([spec])["tasks"])
        except Exception as err:  # noqa: BLE001  any failure to build the task is a skip
            skipped.append({"task": name, "reason": one_line(err)})
    return tasks, skipped


def chance(task, limit: int | None) -> float | None:
    """Expected accuracy of a uniform random guess (multiple choice), None otherwise."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return None
    docs = list(task.eval_docs)[: limit or None]
    return sum(1 / len(task.doc_to_choice(d)) for d in docs) / len(docs) if docs else None


def _number(value):
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarize(results: dict, chances: dict) -> dict:
    """Per task: acc (and acc_norm where the task has it), their standard errors, the number of
    items scored and the random-chance accuracy, from lm-eval's results dictionary."""
    out = {}
    for name in sorted(results["results"]):
        r = results["results"][name]
        entry = {}
        for metric in ("acc", "acc_norm"):
            if f"{metric},none" in r:
                entry[metric] = _number(r[f"{metric},none"])
                entry[f"{metric}_stderr"] = _number(r.get(f"{metric}_stderr,none"))
        counts = results.get("n-samples", {}).get(name, {})
        entry["n"] = counts.get("effective", counts.get("original"))
        entry["random_chance"] = chances.get(name)
        out[name] = entry
    return out


def average(tasks: dict, key: str = "acc") -> float | None:
    values = [t[key] for t in tasks.values() if t.get(key) is not None]
    return sum(values) / len(values) if values else None


@dataclass
class TaskSet:
    names: list
    manager: object
    tasks: dict
    skipped: list
    hub: str


def prepare(names: list[str], include: list[str]) -> TaskSet:
    """The requested tasks, loaded with their data (before any model: a typo fails fast)."""
    if not names:
        raise SurgeonError("no zero-shot task requested")
    manager, hub = task_manager(names, include)
    tasks, skipped = load_tasks(manager, names, include)
    for s in skipped:
        print(f"zeroshot: skipped {s['task']}: {s['reason']}", flush=True)
    return TaskSet(list(names), manager, tasks, skipped, hub)


def evaluate(model, tokenizer, names: list[str], include: list[str], limit: int = 0,
             batch_size: int = 16, log_samples: bool = False) -> tuple[dict, dict | None]:
    """prepare + score in one call, for a caller that already holds the model (tests)."""
    return score(model, tokenizer, prepare(names, include), limit, batch_size, log_samples)


def score(model, tokenizer, taskset: TaskSet, limit: int = 0, batch_size: int = 16,
          log_samples: bool = False) -> tuple[dict, dict | None]:
    """(summary, lm-eval's raw results or None when no task could run) for `model`, wrapped in
    lm-eval's HFLM as it is in memory (pruned, recovered, quantized weights are what is scored).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks, manager = taskset.tasks, taskset.manager
    raw = None
    if tasks:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        raw = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), task_manager=manager,
                                      limit=limit or None, bootstrap_iters=BOOTSTRAP_ITERS,
                                      log_samples=log_samples)
    chances = {name: chance(t, limit) for name, t in tasks.items()}
    per_task = summarize(raw, chances) if raw else {}
    summary = {
        "tasks": per_task,
        "average_acc": average(per_task),
        # a free-text target (cloze) is guessed at random with probability ~1/vocabulary: 0
        "average_random_chance": average({k: {"c": t["random_chance"] or 0.0}
                                          for k, t in per_task.items()}, "c"),
        "tasks_requested": taskset.names,
        "skipped": taskset.skipped,
        "hub": taskset.hub,
        "limit": limit or None,
        "batch_size": batch_size,
        "lm_eval_version": lm_eval.__version__,
    }
    return summary, raw
