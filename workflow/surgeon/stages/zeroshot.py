"""`surgeon zeroshot` and `surgeon cloze-task`: zero-shot accuracy through lm-eval and the
last-word task it reads from the evaluation text."""

from __future__ import annotations

import json
import time

from ..errors import SurgeonError


def cmd_cloze_task(args):
    import yaml

    from ..artifacts import atomic_path, manifest, write_json
    from ..cloze import TASK_NAME, cloze_items, task_config
    from ..data import load_split

    start = time.time()
    if not 0 < args.evaluation_fraction < 1:
        raise SurgeonError("evaluation fraction must be in (0, 1)")
    if args.min_context_words >= args.max_context_words:
        raise SurgeonError("--min-context-words must be below --max-context-words")
    split = load_split(args.source, args.evaluation_fraction)
    items = cloze_items(split.evaluation, args.items, args.seed, args.min_word_length,
                        args.min_context_words, args.max_context_words)
    settings = {k: getattr(args, k) for k in ("source", "evaluation_fraction", "seed", "items",
                                              "min_word_length", "min_context_words",
                                              "max_context_words")}
    with atomic_path(args.out, directory=True) as tmp:
        (tmp / f"{TASK_NAME}.yaml").write_text(
            "# Built by `surgeon cloze-task` from the evaluation split of the text source.\n"
            + yaml.safe_dump(task_config(), sort_keys=False))
        (tmp / f"{TASK_NAME}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        write_json(tmp / "manifest.json", manifest(
            "cloze-task", {}, settings, start, split=split.description, items=len(items)))
    print(f"cloze task: {len(items)} passages from the evaluation split of {args.source}")


def cmd_zeroshot(args):
    from ..artifacts import atomic_path, manifest, sidecar, write_json
    from ..models import load_model, load_tokenizer, resolve_device
    from ..zeroshot import prepare, score

    start = time.time()
    names = [n for n in args.tasks.split(",") if n]
    if args.limit < 0 or args.batch_size < 1:
        raise SurgeonError("--limit must be >= 0 and --batch-size >= 1")
    taskset = prepare(names, args.include)
    model = load_model(args.model, resolve_device(args.device))
    summary, _ = score(model, load_tokenizer(args.model), taskset, args.limit, args.batch_size)
    summary.update(model=args.model_name, experiment=args.experiment, stage=args.model_stage,
                   model_dir=str(args.model), device=str(model.device),
                   wall_s=round(time.time() - start, 3))
    config = {"tasks": names, "limit": args.limit, "batch_size": args.batch_size}
    info = manifest("zeroshot", {"model": args.model, **{f"tasks:{p}": p for p in args.include}},
                    config, start, lm_eval=summary["lm_eval_version"])
    with atomic_path(args.out) as tmp:  # the sidecar inside: it records the result's sha256
        write_json(sidecar(args.out), info)
        write_json(tmp, summary)
    for name, t in summary["tasks"].items():
        chance = "" if t["random_chance"] is None else f" (chance {t['random_chance']:.3f})"
        print(f"{name}: acc {t['acc']:.4f} on {t['n']} items{chance}")
    if summary["average_acc"] is not None:
        print(f"average acc {summary['average_acc']:.4f} over {len(summary['tasks'])} tasks;"
              f" {len(summary['skipped'])} skipped; {summary['wall_s']:.0f} s")


def add_parsers(sub) -> None:
    s = sub.add_parser("cloze-task", help="last-word task from the evaluation text -> folder")
    s.add_argument("--source", required=True, help="text source (as data.source)")
    s.add_argument("--evaluation-fraction", type=float, default=0.2,
                   help="last share of the text the passages come from (as data.*)")
    s.add_argument("--seed", type=int, default=0, help="seed of the passage draw")
    s.add_argument("--items", type=int, default=100, help="passages (at most one a paragraph)")
    s.add_argument("--min-word-length", type=int, default=4, help="letters of the last word")
    s.add_argument("--min-context-words", type=int, default=15,
                   help="words before the last word, at least")
    s.add_argument("--max-context-words", type=int, default=60,
                   help="words before the last word, at most")
    s.add_argument("--out", required=True, help="folder: surgeon_cloze.yaml + .jsonl")
    s.set_defaults(func=cmd_cloze_task)

    s = sub.add_parser("zeroshot", help="lm-eval zero-shot accuracy of a model folder -> JSON")
    s.add_argument("--model", required=True, help="model folder to score")
    s.add_argument("--tasks", required=True, help="comma-separated task names")
    s.add_argument("--include", nargs="*", default=[],
                   help="folders of task YAMLs (resources/tasks, the cloze task folder)")
    s.add_argument("--limit", type=int, default=0, help="items per task (0 = all)")
    s.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    s.add_argument("--device", default="auto", help="where the model runs (auto: CUDA if present)")
    s.add_argument("--out", required=True, help="zero-shot JSON to write")
    s.add_argument("--model-name", default="model", help="model name recorded (for the report)")
    s.add_argument("--experiment", default="dense", help="experiment recorded (for the report)")
    s.add_argument("--stage", dest="model_stage", default="dense",
                   help="dense, shot-K, recovered, compact, quantized-NAME (for the report)")
    s.set_defaults(func=cmd_zeroshot)
