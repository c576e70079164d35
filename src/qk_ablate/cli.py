"""The `qk-ablate` command line: sweeps, reports, the regression gate and massive-value profiles.

Every user-fixable problem is printed as one line (`qk-ablate: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qk_ablate.errors import QKAblateError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qk-ablate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    stats = commands.add_parser("stats", help="count massive dims of Q, K, V per layer on passkey prompts")
    stats.add_argument("--model", default="smollm2-135m")
    stats.add_argument("--length", type=int, default=1024, help="prompt length in tokens")
    stats.add_argument("--samples", type=int, default=2)
    stats.add_argument("--lam", type=float, default=5.0)

    profile = commands.add_parser("profile", help="M matrices of Q/K/V pre and post RoPE at several lengths: npz, JSON, PNG")
    profile.add_argument("--model", default="smollm2-135m", help="pretrained= value (default: the embedded SmolLM2-135M)")
    profile.add_argument("--lengths", default="1k,2k,4k,8k", help="context lengths in the model's tokens (default: 1k,2k,4k,8k)")
    profile.add_argument("--samples", type=int, default=10, help="prompts per length (default: 10)")
    profile.add_argument("--source", default="ctxqa", choices=("ctxqa", "passkey", "niah"), help="which task's prompts to read")
    profile.add_argument("--lam", type=float, default=5.0, help="massive threshold: M >= lam x the head's mean")
    profile.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    profile.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                         help="weights' dtype (default: the checkpoint's; GGUF loads as float32)")
    profile.add_argument("--attn-implementation", default=None, help="sdpa (default), flash_attention_2, eager, ...")
    profile.add_argument("--out", default=None, help="output folder (default: results/profile/<model>)")
    profile.add_argument("--replot", default=None, metavar="FOLDER", help="redraw the heatmaps of a saved profile; runs no model")

    report = commands.add_parser("report", help="table of runs with 95% paired bootstrap intervals (md, csv, html, png)")
    report.add_argument("runs", nargs="+", help="lm_eval --output_path folders (run with --log_samples)")
    report.add_argument("--baseline", default=None, help="the run to compare against (default: each model's run without intervention)")
    report.add_argument("--out", default=None, help="folder for report.md/.csv/.html and report_deltas.png (default: print only)")
    report.add_argument("--kinds", default="", help="kinds of your own tasks, e.g. my_facts=parametric,my_niah=contextual")
    report.add_argument("--iterations", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    report.add_argument("--tasks", default=None, help="only these tasks (comma-separated), e.g. to leave out one at chance")

    sweep = commands.add_parser("sweep", help="run a grid of models x interventions x tasks (resumable), then report")
    sweep.add_argument("config", help="sweep YAML, e.g. configs/demo.yaml")
    sweep.add_argument("--iterations", type=int, default=10_000, help="bootstrap resamples of the report")

    gate = commands.add_parser("gate", help="exit 1 when the candidate loses more than its budget against the baseline")
    gate.add_argument("--baseline", required=True, help="lm_eval --output_path folder of the reference run")
    gate.add_argument("--candidate", required=True, help="lm_eval --output_path folder of the run to judge")
    gate.add_argument("--max-drop", required=True, help="points, e.g. contextual=2,parametric=2,passkey_4k=5")
    gate.add_argument("--junit", default=None, help="write a JUnit XML report here")
    gate.add_argument("--json", default=None, help="write the verdict as JSON here")

    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "profile":
            return _profile(args)
        if args.command == "gate":
            return _gate(args)
        if args.command == "sweep":
            from qk_ablate.sweep import main_sweep

            return main_sweep(args.config, iterations=args.iterations)
        return _stats(args)
    except QKAblateError as error:
        print(f"qk-ablate: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `qk-ablate report ... | head`
        sys.stderr.close()
        return 0


def _profile(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from qk_ablate.embedded import load_tokenizer, resolve_pretrained
    from qk_ablate.profile import headline, load_profile, run_profile, save_heatmaps, save_profile
    from qk_ablate.task_data.lengths import parse_length

    if args.replot:
        for written in save_heatmaps(load_profile(args.replot), args.replot):
            print(f"wrote {written}", file=sys.stderr)
        return 0
    lengths = sorted({parse_length(part) for part in args.lengths.split(",") if part.strip()})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path, gguf = resolve_pretrained(args.model)
    load = {"gguf_file": gguf} if gguf else {}
    if args.attn_implementation:
        load["attn_implementation"] = args.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=args.dtype, **load).to(device).eval()
    except (OSError, ValueError, ImportError) as error:  # missing files, unknown attn_implementation, no flash-attn
        raise QKAblateError(f"could not load model {args.model!r} ({str(error).strip().splitlines()[0]})") from None
    profile = run_profile(model, load_tokenizer(args.model), args.model, lengths, args.samples, args.source, args.lam)
    out = Path(args.out or Path("results") / "profile" / Path(str(args.model)).name)
    for written in save_profile(profile, out):
        print(f"wrote {written}", file=sys.stderr)
    print(headline(profile))
    return 0


def _report(args: argparse.Namespace) -> int:
    from qk_ablate.report import build_report, to_markdown, write_report
    from qk_ablate.runs import load_run

    kinds = {}
    for part in filter(None, (p.strip() for p in args.kinds.split(","))):
        task, _, kind = part.partition("=")
        if kind not in ("contextual", "parametric"):
            raise QKAblateError(f"--kinds entry '{part}' must be TASK=contextual or TASK=parametric")
        kinds[task] = kind
    if args.iterations < 100:
        raise QKAblateError(f"--iterations must be at least 100, got {args.iterations}")
    runs = [load_run(path) for path in args.runs]
    baseline = load_run(args.baseline) if args.baseline else None
    only = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    report = build_report(runs, baseline=baseline, kinds=kinds, iterations=args.iterations, only=only)
    print(to_markdown(report))
    if args.out:
        for path in write_report(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from qk_ablate.gate import run_gate

    verdict = run_gate(args.baseline, args.candidate, args.max_drop, junit=args.junit, json_path=args.json)
    print(verdict.reason, file=sys.stdout if verdict.code == 0 else sys.stderr)
    return verdict.code


def _stats(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    from qk_ablate.arch import find_layout
    from qk_ablate.embedded import load_tokenizer, resolve_pretrained
    from qk_ablate.profile import collect_massive_stats
    from qk_ablate.task_data.passkey import build_passkey_docs

    path, gguf = resolve_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, **({"gguf_file": gguf} if gguf else {})).eval()
    tokenizer = load_tokenizer(args.model)
    docs = build_passkey_docs(tokenizer, args.length, num_docs=args.samples, gen_budget=0)
    batches = [{"input_ids": tokenizer(doc["input"], return_tensors="pt").input_ids} for doc in docs]
    where = ("pre", "post") if find_layout(model).has_rope else ("pre",)
    stats = collect_massive_stats(model, batches, where=where, lam=args.lam)
    print("layer | " + " | ".join(f"{w}-{n}" for w in where for n in "qkv"))
    for layer in stats.layers():
        counts = [stats.massive_count(layer, n, w) for w in where for n in "qkv"]
        print(f"{layer:5d} | " + " | ".join(f"{c:5.1f}" for c in counts))
    print(f"mean massive (head, dim) columns per sample at lam={args.lam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
