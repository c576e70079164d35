"""The `qk-ablate` command line: the entry point of every command (sweep, report, gate, profile,
fingerprint, depth, quantize).

Every user-fixable problem is printed as one line (`qk-ablate: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qk_ablate.cli_parser import build_parser
from qk_ablate.errors import QKAblateError
from qk_ablate.task_data.catalogue import parse_kinds


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(" ".join((__doc__ or "").split("\n\n")[0].split()))
    args = parser.parse_args(argv)
    try:
        runner = {
            "profile": _profile,
            "report": _report,
            "gate": _gate,
            "fingerprint": _fingerprint,
            "depth": _depth,
            "quantize": _quantize,
            "sweep": _sweep,
        }[args.command]
        return runner(args)
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
