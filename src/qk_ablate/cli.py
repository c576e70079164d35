"""The `qk-ablate` command line: the entry point of every command (sweep, report, gate, profile,
fingerprint, depth, quantize).

Every user-fixable problem is printed as one line (`qk-ablate: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qk_ablate.errors import QKAblateError
from qk_ablate.models.loading import DTYPES
from qk_ablate.stats.compare import DEFAULT_ITERATIONS
from qk_ablate.task_data.catalogue import PROFILE_SOURCES, parse_kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qk-ablate", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--version", action="version", version=f"qk-ablate {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    profile = commands.add_parser(
        "profile", help="M matrices of Q/K/V pre and post RoPE at several lengths: npz, JSON, PNG"
    )
    profile.add_argument(
        "--model", default="smollm2-135m", help="pretrained= value (default: the embedded SmolLM2-135M)"
    )
    profile.add_argument(
        "--lengths", default="1k,2k,4k,8k", help="context lengths in the model's tokens (default: 1k,2k,4k,8k)"
    )
    profile.add_argument("--samples", type=int, default=10, help="prompts per length (default: 10)")
    profile.add_argument("--source", default="ctxqa", choices=PROFILE_SOURCES, help="which task's prompts to read")
    profile.add_argument("--lam", type=float, default=5.0, help="massive threshold: M > lam x the head's mean")
    profile.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    profile.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights' dtype (default: the checkpoint's; GGUF loads as float32)",
    )
    profile.add_argument("--attn-implementation", default=None, help="sdpa (default), flash_attention_2, eager, ...")
    profile.add_argument("--out", default=None, help="output folder (default: results/profile/<model>)")
    profile.add_argument(
        "--replot", default=None, metavar="FOLDER", help="redraw the heatmaps of a saved profile; runs no model"
    )

    report = commands.add_parser(
        "report", help="table of runs with 95%% paired bootstrap intervals (md, csv, html, png)"
    )
    report.add_argument(
        "runs",
        nargs="+",
        help="lm_eval --output_path folders (run with --log_samples); folders of one model and intervention are merged",
    )
    report.add_argument(
        "--baseline",
        nargs="+",
        default=None,
        metavar="DIR",
        help="the run to compare against, in one or more folders (default: each model's run without intervention)",
    )
    report.add_argument(
        "--out", default=None, help="folder for report.md/.csv/.html and report_deltas.png (default: print only)"
    )
    report.add_argument(
        "--kinds", default="", help="kinds of your own tasks, e.g. my_facts=parametric,my_niah=contextual"
    )
    report.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"bootstrap resamples (default: {DEFAULT_ITERATIONS})",
    )
    report.add_argument(
        "--tasks", default=None, help="only these tasks (comma-separated), e.g. to leave out one at chance"
    )
    report.add_argument(
        "--keep-no-signal",
        action="store_true",
        help="count tasks whose baseline is at chance or at a constant answer in their kind's mean (default: "
        "shown, named in a footnote, left out of the means)",
    )

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of models x interventions x tasks (resumable), then report",
        description="Run a grid of models x interventions x tasks (resumable), then report.",
        epilog=_sweep_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("config", help="sweep YAML, e.g. configs/demo.yaml")
    sweep.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="bootstrap resamples of the report")

    gate = commands.add_parser(
        "gate",
        help="exit 1 when the candidate loses more than its budget against the baseline",
        description="Judge a candidate run against a baseline run, budget by budget.",
        epilog="exit status: 0 every budget holds; 1 a budget is exceeded; 2 the runs could not be compared "
        "(missing, empty or corrupt files, a task missing from the candidate, unpaired documents, a budget "
        "naming something the baseline does not have). It never passes what it could not compare.",
    )
    gate.add_argument(
        "--baseline",
        required=True,
        nargs="+",
        metavar="DIR",
        help="lm_eval --output_path folder(s) of the reference run (one lm_eval call per task is fine)",
    )
    gate.add_argument(
        "--candidate",
        required=True,
        nargs="+",
        metavar="DIR",
        help="lm_eval --output_path folder(s) of the run to judge",
    )
    gate.add_argument("--max-drop", required=True, help="points, e.g. contextual=2,parametric=2,passkey_4k=5")
    gate.add_argument("--junit", default=None, help="write a JUnit XML report here")
    gate.add_argument("--json", default=None, help="write the verdict as JSON here")
    gate.add_argument(
        "--kinds", default="", help="kinds of your own tasks, e.g. my_facts=parametric,my_niah=contextual"
    )

    fingerprint = commands.add_parser(
        "fingerprint",
        help="compare two models' massive Q/K structure on the same prompts (no task run): summary, JSON, PNG",
    )
    fingerprint.add_argument("--baseline", required=True, help="model_args, e.g. pretrained=smollm2-135m")
    fingerprint.add_argument(
        "--candidate", required=True, help="model_args, e.g. pretrained=smollm2-135m,quant=int4,quant_targets=qk"
    )
    fingerprint.add_argument("--lengths", default="1k", help="prompt lengths in the model's tokens (default: 1k)")
    fingerprint.add_argument("--samples", type=int, default=4, help="prompts per length (default: 4)")
    fingerprint.add_argument("--source", default="ctxqa", choices=PROFILE_SOURCES, help="which task's prompts to read")
    fingerprint.add_argument("--lam", type=float, default=5.0, help="massive threshold: M > lam x the head's mean")
    fingerprint.add_argument(
        "--where", default="post", choices=("post", "pre"), help="Q/K after RoPE (default) or before"
    )
    fingerprint.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    fingerprint.add_argument(
        "--out", default=None, help="output folder (default: results/fingerprint/<candidate>__vs__<baseline>)"
    )

    depth = commands.add_parser(
        "depth",
        help="rank and probability of the gold answer's first token at every layer "
        "(logit and tuned lens), baseline vs interventions: JSON, PNG",
    )
    depth.add_argument(
        "--model_args", default="pretrained=smollm2-135m", help="pretrained=X,dtype=float32,... (no intervention keys)"
    )
    depth.add_argument(
        "--intervention",
        action="append",
        default=None,
        metavar="KEYS",
        help="an intervention beside the baseline, e.g. ablate=massive (repeat for several)",
    )
    depth.add_argument(
        "--tasks",
        default="passkey_1k,city_facts",
        help="lm-eval tasks, comma-separated (default: passkey_1k,city_facts)",
    )
    depth.add_argument("--limit", default="30", help="documents per task (default: 30)")
    depth.add_argument("--lens", default="both", help="logit, tuned or both (default: both)")
    depth.add_argument(
        "--train-lens", action="store_true", help="train the tuned lens on this model and cache it (minutes on CPU)"
    )
    depth.add_argument("--lens-cache", default=None, help="tuned lens file (default: <out>/tuned_lens.pt)")
    depth.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    depth.add_argument("--out", default=None, help="output folder (default: results/depth/<model>)")

    quantize = commands.add_parser(
        "quantize",
        help="make real quantized checkpoints with llm-compressor "
        "(run it from .venv-quant: bash scripts/setup.sh --quant)",
    )
    quantize.add_argument(
        "--model", default="smollm2-135m", help="a local model folder (default: the embedded SmolLM2-135M)"
    )
    quantize.add_argument(
        "--method",
        action="append",
        default=None,
        metavar="NAME",
        help="rtn, gptq, awq, smoothquant, w8a8 or all (repeat for several; default: all)",
    )
    quantize.add_argument(
        "--out", default="runs/quantized", help="parent folder; each checkpoint goes to <out>/<model>-<method>"
    )
    quantize.add_argument(
        "--calibration",
        default="gsm8k",
        help="gsm8k (the packaged GSM8K test problems and solutions) or a .jsonl (field text) / .txt file",
    )
    quantize.add_argument("--samples", type=int, default=128, help="calibration samples (default: 128)")
    quantize.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default: 512)")
    quantize.add_argument("--seed", type=int, default=0, help="order of the calibration documents (default: 0)")
    quantize.add_argument(
        "--group", default="auto", help="int4 group size (default auto: 128, 64 or 32, whichever divides every layer)"
    )
    quantize.add_argument(
        "--grid",
        type=int,
        default=20,
        help="AWQ's grid-search points per layer (default 20, llm-compressor's; fewer is faster on CPU)",
    )

    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "profile":
            return _profile(args)
        if args.command == "gate":
            return _gate(args)
        if args.command == "fingerprint":
            return _fingerprint(args)
        if args.command == "depth":
            return _depth(args)
        if args.command == "quantize":
            return _quantize(args)
        return _sweep(args)
    except QKAblateError as error:
        print(f"qk-ablate: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `qk-ablate report ... | head`
        sys.stderr.close()
        return 0


def _profile(args: argparse.Namespace) -> int:
    from qk_ablate.models.loading import load_model
    from qk_ablate.probes.figures import save_heatmaps
    from qk_ablate.probes.profile import headline, load_profile, run_profile, save_profile
    from qk_ablate.task_data.lengths import parse_length

    if args.replot:
        for written in save_heatmaps(load_profile(args.replot), args.replot):
            print(f"wrote {written}", file=sys.stderr)
        return 0
    lengths = sorted({parse_length(part) for part in args.lengths.split(",") if part.strip()})
    model, tokenizer = load_model(args.model, args.device, args.dtype, args.attn_implementation)
    profile = run_profile(model, tokenizer, args.model, lengths, args.samples, args.source, args.lam)
    out = Path(args.out or Path("results") / "profile" / Path(str(args.model)).name)
    for written in [*save_profile(profile, out), *save_heatmaps(profile, out)]:
        print(f"wrote {written}", file=sys.stderr)
    print(headline(profile))
    return 0


def _report(args: argparse.Namespace) -> int:
    from qk_ablate.stats.report import build_report, to_markdown, write_report
    from qk_ablate.stats.runs import load_runs

    if args.iterations < 100:
        raise QKAblateError(f"--iterations must be at least 100, got {args.iterations}")
    runs = load_runs(args.runs)
    baseline = None
    if args.baseline:
        (baseline, *more) = load_runs(args.baseline)
        if more:
            raise QKAblateError(
                "the --baseline folders hold more than one run; give the folders of one model and intervention"
            )
    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    report = build_report(
        runs,
        baseline=baseline,
        kinds=parse_kinds(args.kinds),
        iterations=args.iterations,
        only=only,
        keep_no_signal=args.keep_no_signal,
    )
    print(to_markdown(report))
    _warn_unclassified(report.unclassified)
    if args.out:
        for path in write_report(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from qk_ablate.stats.gate import run_gate

    verdict = run_gate(
        args.baseline,
        args.candidate,
        args.max_drop,
        junit=args.junit,
        json_path=args.json,
        kinds=parse_kinds(args.kinds),
    )
    print(verdict.reason, file=sys.stdout if verdict.code == 0 else sys.stderr)
    return verdict.code


def _fingerprint(args: argparse.Namespace) -> int:
    import re

    from qk_ablate.probes.fingerprint import run_fingerprint, save_fingerprint, summary_text
    from qk_ablate.task_data.lengths import parse_length

    lengths = sorted({parse_length(part) for part in args.lengths.split(",") if part.strip()})
    result = run_fingerprint(
        args.baseline,
        args.candidate,
        lengths,
        args.samples,
        args.source,
        args.lam,
        args.where,
        args.device,
        log=lambda line: print(line, file=sys.stderr),
    )
    slug = lambda text: re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace("pretrained=", "")).strip("_")  # noqa: E731
    out = Path(args.out or Path("results") / "fingerprint" / f"{slug(args.candidate)}__vs__{slug(args.baseline)}")
    for written in save_fingerprint(result, out):
        print(f"wrote {written}", file=sys.stderr)
    print(summary_text(result))
    return 0


def _depth(args: argparse.Namespace) -> int:
    from qk_ablate.probes.depth import run_depth

    if not str(args.limit).isdigit():
        raise QKAblateError(f"--limit {args.limit!r} must be a whole number of documents per task")
    for written in run_depth(
        args.model_args,
        args.intervention,
        args.tasks,
        int(args.limit),
        args.lens,
        args.train_lens,
        args.out,
        args.lens_cache,
        args.device,
        log=lambda line: print(line, file=sys.stderr),
    ):
        print(f"wrote {written}", file=sys.stderr)
    return 0


def _quantize(args: argparse.Namespace) -> int:
    """Each method into its own folder; a method already written is kept, so a rerun finishes the rest."""
    from qk_ablate.models.checkpoints import METHODS, Calibration, describe_folder, quantize

    methods = list(METHODS) if not args.method or "all" in args.method else args.method
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise QKAblateError(f"--method {unknown[0]!r} is not one of {', '.join(METHODS)}, all")
    if args.samples < 1 or args.seq_len < 1 or args.grid < 1:
        raise QKAblateError("--samples, --seq-len and --grid must be whole numbers >= 1")
    if args.group != "auto" and not (args.group.isdigit() and int(args.group) > 0):
        raise QKAblateError(f"--group {args.group!r} must be auto or a whole number of columns > 0, e.g. 128")
    calibration = Calibration(args.calibration, args.samples, args.seq_len, args.seed)
    for method in methods:
        folder = Path(args.out) / f"{Path(args.model).name}-{method}"
        if (folder / "config.json").is_file():
            print(f"kept {folder}: {describe_folder(folder)}", file=sys.stderr)
            continue
        quantize(
            args.model,
            method,
            folder,
            calibration,
            args.group,
            args.grid,
            log=lambda line: print(line, file=sys.stderr),
        )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Run the grid, print the report, write it beside the cells and write the leaderboard."""
    from qk_ablate.stats.report import build_report, to_markdown, write_report
    from qk_ablate.stats.runs import load_run
    from qk_ablate.sweep import load_config, run_sweep, write_leaderboard

    config = load_config(args.config)
    cells = run_sweep(config, log=lambda line: print(line, file=sys.stderr))
    runs = [load_run(cell) for cell in cells]
    baseline = None
    if config.baseline_model is not None:
        found = [run for run in runs if run.model == config.baseline_model and run.is_baseline]
        if not found:
            raise QKAblateError(
                f"baseline_model {config.baseline_model}: the sweep has no intervention without changes "
                "(add baseline: {} to its interventions)"
            )
        baseline = found[0]
    report = build_report(runs, baseline=baseline, kinds=config.kinds, iterations=args.iterations)
    markdown = to_markdown(report)
    print(markdown)
    _warn_unclassified(report.unclassified)
    for written in write_report(report, config.output):
        print(f"wrote {written}", file=sys.stderr)
    if config.leaderboard is not None:
        board = write_leaderboard(config, markdown, config.leaderboard, f"qk-ablate sweep {args.config}")
        print(f"wrote {board}", file=sys.stderr)
    return 0


def _warn_unclassified(tasks: list[str]) -> None:
    if tasks:
        from qk_ablate.stats.gate import unclassified_warning

        print(f"qk-ablate: warning: {unclassified_warning(tasks)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())


def _version() -> str:
    from qk_ablate import __version__

    return str(__version__)


def _sweep_keys() -> str:
    """The YAML keys, as the sweep module documents them (its docstring's example config)."""
    from qk_ablate import sweep

    doc = sweep.__doc__ or ""
    start = doc.find("Config (YAML)::")
    end = doc.find("With `profile`")
    return doc[start:end].rstrip() if start >= 0 else ""
