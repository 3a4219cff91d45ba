"""The `distill` command line: a thin front over library functions.

Nothing here imports torch or transformers at module level: `distill --help` and
`distill validate` must answer in well under two seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from distill.errors import EXIT_USAGE, DistillError

EPILOG = """\
examples:
  distill validate recipes/quickstart.yaml          check a recipe without loading any model
  distill run recipes/quickstart.yaml               run it; outputs go to runs/<run_id>/
  distill run recipes/lm/smollm2-kd.yaml stages.0.train.steps=20 seed=1
  distill run --resume runs/<run_id>                finish an interrupted run
  distill plan recipes/moe/qwen3-30b-a3b-to-1.7b.yaml  memory estimate before a run
  distill cache RECIPE stages.0.cache.dir=DIR       fill an offline teacher cache only (torchrun: in parallel)
  distill eval asset:whisper-base --suite asr-en    evaluate any model or artifact
  distill transcribe asset:whisper-base talk.wav    text (or --json with timings) from any speech model
  distill report                                    rebuild results/README.md + index.html from the records
  distill assets install --all                      fetch and convert the offline models and data
  distill ls                                        stage kinds, losses, suites, assets
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill",
        description="Distil, fine-tune, prune, quantize and export models from YAML recipes, "
        "and evaluate every artifact with one harness.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe (stages in order, then evaluation)",
                         description="Run a recipe. Overrides are dotted.key=value, values parsed "
                         "as YAML (e.g. stages.0.train.steps=20 seed=1).")
    run.add_argument("recipe", nargs="?", help="recipe YAML (omit with --resume)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run directory")
    run.add_argument("--force", action="store_true",
                     help="with --resume: continue although recipe.resolved.yaml was edited since the "
                     "run started (recorded in provenance.json)")

    val = sub.add_parser("validate", help="check a recipe (fast; loads no model)")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*", metavar="key=value")
    val.add_argument("--print", action="store_true", dest="print_", help="print the resolved recipe")
    val.add_argument("--deep", action="store_true", help="also what `run` checks with transformers "
                     "before writing anything: inline model configs built on the meta device, hub ids "
                     "(imports torch: seconds, not milliseconds)")

    plan = sub.add_parser("plan", help="memory/parameter estimate for a recipe (no weights loaded)")
    plan.add_argument("recipe")
    plan.add_argument("overrides", nargs="*", metavar="key=value")

    cache = sub.add_parser("cache", help="fill the offline teacher cache of a recipe's offline distill "
                           "stages, then stop (launch with torchrun to fill in parallel)")
    cache.add_argument("recipe")
    cache.add_argument("overrides", nargs="*", metavar="key=value")

    ev = sub.add_parser("eval", help="evaluate a model or artifact on a suite -> results/")
    ev.add_argument("model", help="artifact dir, asset:<id>, HF directory or hub id")
    ev.add_argument("--suite", required=True, help="suite name (see `distill ls`)")
    ev.add_argument("--limit", type=int, help="items per task (default: all)")
    ev.add_argument("--baseline", help="record (path or artifact id) for recovery ratios")
    ev.add_argument("--results-dir", default="results", type=Path)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--threads", type=int)
    ev.add_argument("--language", help="ASR: language forced in decoding, over the tasks' own (code, e.g. en)")
    ev.add_argument("--context", help="ASR: text context, Whisper's prompt or Qwen3-ASR's system turn")
    ev.add_argument("--long-audio", choices=["chunk", "error"], help="ASR: audio past the model's window: "
                    "transcribe it in pieces (the tasks' default) or refuse it")

    tr = sub.add_parser("transcribe", help="transcribe audio files with any speech model or export",
                        description="Transcribe audio with any model `distill eval` can load (HF Whisper, "
                        "quantized, ONNX, CTranslate2, Qwen3-ASR, asset:<id>): batch 1, greedy, through "
                        "the evaluation adapters. Audio longer than the model's window is transcribed "
                        "window by window.")
    tr.add_argument("model", help="artifact dir, asset:<id>, HF directory or hub id")
    tr.add_argument("audio", nargs="+", help="audio files (any sample rate; resampled to 16 kHz)")
    tr.add_argument("--language", default="en", help="language code or name forced in decoding (default en)")
    tr.add_argument("--context", help="text context (names, domain words): Whisper's prompt or "
                    "Qwen3-ASR's system turn")
    tr.add_argument("--json", action="store_true", dest="json_", help="print JSON with timings and conditions")
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=int)

    rep = sub.add_parser("report", help="regenerate results/README.md, index.html and plots from the records")
    rep.add_argument("--results-dir", default="results", type=Path)

    assets = sub.add_parser("assets", help="offline models and data: list, install, verify, path")
    asub = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    asub.add_parser("list", help="table of assets and whether they are installed")
    inst = asub.add_parser("install", help="fetch, verify, convert and cache assets")
    inst.add_argument("ids", nargs="*")
    inst.add_argument("--all", action="store_true", dest="all_")
    ver = asub.add_parser("verify", help="re-check the sha256 of installed assets")
    ver.add_argument("ids", nargs="*")
    pth = asub.add_parser("path", help="print the local directory of an installed asset")
    pth.add_argument("id")

    sub.add_parser("ls", help="list stage kinds, losses, suites, tasks and assets")
    return p


def _run(args) -> int:
    from distill import runner

    if args.resume and args.recipe:  # `run --resume DIR` parses fine; `run X --resume DIR` is ambiguous
        args.overrides = [args.recipe, *args.overrides]
    result = runner.run(None if args.resume else args.recipe, args.overrides, resume=args.resume,
                        force=args.force)
    if result.rank:  # torchrun: rank 0 reports the run
        return 0
    print(f"run finished: {result.run_dir}")
    for name, art in result.artifacts.items():
        print(f"  {name}: {art.path} ({art.size_bytes / 1e6:.1f} MB)")
    for rec in result.records:
        print(f"  result: {rec}")
    if result.records:
        from distill.evaluation.report import summary

        print(f"\n{summary(result.records)}\nreport: {Path(result.records[0]).parent / 'index.html'}")
    return 0


def _validate(args) -> int:
    from distill import recipe

    r = recipe.load(args.recipe, args.overrides)
    for note in recipe.check_references(r):
        print(f"note: {note}", file=sys.stderr)
    if args.deep:
        from distill import config_checks

        config_checks.deep(r)
    if args.print_:
        print(recipe.dump(r), end="")
    kinds = " -> ".join(recipe.stage_name(i, s) for i, s in enumerate(r.stages))
    print(f"ok: {args.recipe} ({r.name}: {kinds})")
    return 0


def _plan(args) -> int:
    from distill import plan

    print(plan.plan(args.recipe, args.overrides))
    return 0


def _cache(args) -> int:
    from distill.stages.distill import fill_cache_only

    for summary in fill_cache_only(args.recipe, args.overrides):
        if summary.get("per_process") is not None and os.environ.get("RANK", "0") == "0":
            print(f"teacher cache {summary['stage']}: {summary['dir']} ({summary['tokens']} tokens, "
                  f"{summary['bytes_per_token']} bytes/token, {summary['fill_processes']} process(es))")
    return 0


def _eval(args) -> int:
    from distill.evaluation.harness import evaluate

    path = evaluate(args.model, args.suite, limit=args.limit, baseline=args.baseline,
                    results_dir=args.results_dir, device=args.device, batch_size=args.batch_size,
                    threads=args.threads, asr_options={k: v for k, v in (
                        ("language", args.language), ("context", args.context),
                        ("long_audio", args.long_audio)) if v is not None})
    print(f"record written: {path}")
    return 0


def _transcribe(args) -> int:
    import json

    from distill.transcribe import summary, transcribe_files

    result = transcribe_files(args.model, args.audio, language=args.language, context=args.context,
                              device=args.device, threads=args.threads)
    if args.json_:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for item in result["files"]:
        print(f"{item['audio']}: {item['text']}" if len(result["files"]) > 1 else item["text"])
    print(summary(result), file=sys.stderr)
    return 0


def _report(args) -> int:
    from distill.evaluation.report import write_report

    if not args.results_dir.is_dir():  # a typo would otherwise become a new, empty results dir
        raise DistillError(f"results directory '{args.results_dir}' does not exist"
                           + (" (it is a file)" if args.results_dir.exists() else ""),
                           "pass --results-dir DIR holding records written by `distill eval`")

    readme = write_report(args.results_dir)
    print(f"report written: {readme.with_name('index.html')} (open in a browser) and {readme}")
    return 0


def _assets(args) -> int:
    from distill.assets import commands

    action = args.assets_command or "list"
    if action == "list":
        print(commands.list_table())
    elif action == "install":
        if not args.ids and not args.all_:
            raise DistillError("nothing to install", "name asset ids or pass --all")
        commands.install(args.ids, all_=args.all_)
    elif action == "verify":
        return 0 if commands.verify(args.ids or None) else 1
    elif action == "path":
        print(commands.path(args.id))
    return 0


def _ls(args) -> int:
    from distill import listing

    print(listing.everything())
    return 0


COMMANDS = {"run": _run, "validate": _validate, "plan": _plan, "cache": _cache, "eval": _eval, "transcribe": _transcribe,
            "report": _report,
            "assets": _assets, "ls": _ls}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # Our own logs at INFO; third-party libraries (some log to the root logger) only at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # Under torchrun / accelerate launch each rank logs: ranks > 0 only warnings, unless -v.
    other_rank = os.environ.get("RANK", "0") != "0"
    level = logging.DEBUG if args.verbose else logging.WARNING if other_rank else logging.INFO
    logging.getLogger("distill").setLevel(level)
    try:
        return COMMANDS[args.command](args)
    except DistillError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)  # a failed parity gate: 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
