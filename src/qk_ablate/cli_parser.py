"""What `qk-ablate` accepts: one function per command adds its arguments (the runners are in `cli.py`)."""

from __future__ import annotations

import argparse

from qk_ablate.models.loading import DTYPES
from qk_ablate.stats.compare import DEFAULT_ITERATIONS
from qk_ablate.task_data.catalogue import PROFILE_SOURCES


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of every command; `description` is the entry point's own first paragraph."""
    parser = argparse.ArgumentParser(prog="qk-ablate", description=description)
    parser.add_argument("--version", action="version", version=f"qk-ablate {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_profile(commands)
    _add_report(commands)
    _add_sweep(commands)
    _add_gate(commands)
    _add_fingerprint(commands)
    _add_depth(commands)
    _add_quantize(commands)
    return parser


def _add_profile(commands: argparse._SubParsersAction) -> None:
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
    _add_prompts_and_threshold(profile)
    _add_device(profile)
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


def _add_report(commands: argparse._SubParsersAction) -> None:
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
    _add_kinds(report)
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


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of models x interventions x tasks (resumable), then report",
        description="Run a grid of models x interventions x tasks (resumable), then report.",
        epilog=_sweep_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("config", help="sweep YAML, e.g. configs/demo.yaml")
    sweep.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="bootstrap resamples of the report")


def _add_gate(commands: argparse._SubParsersAction) -> None:
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
    _add_kinds(gate)


def _add_fingerprint(commands: argparse._SubParsersAction) -> None:
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
    _add_prompts_and_threshold(fingerprint)
    fingerprint.add_argument(
        "--where", default="post", choices=("post", "pre"), help="Q/K after RoPE (default) or before"
    )
    _add_device(fingerprint)
    fingerprint.add_argument(
        "--out", default=None, help="output folder (default: results/fingerprint/<candidate>__vs__<baseline>)"
    )


def _add_depth(commands: argparse._SubParsersAction) -> None:
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
    _add_device(depth)
    depth.add_argument("--out", default=None, help="output folder (default: results/depth/<model>)")


def _add_quantize(commands: argparse._SubParsersAction) -> None:
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


def _add_prompts_and_threshold(command: argparse.ArgumentParser) -> None:
    """Which prompts the Q/K probes read and what counts as massive (profile and fingerprint)."""
    command.add_argument("--source", default="ctxqa", choices=PROFILE_SOURCES, help="which task's prompts to read")
    command.add_argument("--lam", type=float, default=5.0, help="massive threshold: M > lam x the head's mean")


def _add_device(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")


def _add_kinds(command: argparse.ArgumentParser) -> None:
    """Kinds of a user's own tasks (report and gate read them the same way)."""
    command.add_argument(
        "--kinds", default="", help="kinds of your own tasks, e.g. my_facts=parametric,my_niah=contextual"
    )
