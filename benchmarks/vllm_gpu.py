"""The vLLM engine on a GPU, side by side with plain vLLM and the HF engine in one run (prints a table).

A random Llama-3.1-8B-shaped bf16 model with a planted massive rotary pair (`gpu.build`) and the
embedded model's tokenizer is saved to a folder; then, on the same work:

* **generate**: `qk_gsm8k`, `--problems` problems, `--tokens` new tokens each (no stop string,
  EOS ignored, so every variant generates the same number of tokens);
* **loglikelihood**: `imdb` (200 reviews from tests/data, two continuations each);
* **passkey_32k**: one 32k-token document;

through plain lm-eval `vllm` at vLLM's defaults, plain `vllm` with `enforce_eager=True`,
`qk_ablated_vllm` with none / `ablate=massive` / `quant=int4` (one engine, `use` between them, at
its defaults: compiled, CUDA graphs), and `qk_ablated` (HF) none / `ablate=massive`. The engines
are loaded once each, side by side on the card; every variant first runs each workload once on a
few documents, untimed (vLLM's and our own first-use compilations); each cell is then the median
wall time of `--repeats` rounds (round robin; the HF engine `--hf-repeats`), and every ratio is
against plain vLLM at its defaults. Plain vLLM's prefix cache is emptied before every run: otherwise
repeated rounds of the same prompts skip their prefill (a cache hit the first evaluation of a task
never gets; prefixes shared within one run, like few-shot examples, still hit).

    python3 benchmarks/vllm_gpu.py --tokenizer .gpu/tokenizer | tee results/benchmarks/vllm_h200.log

On a card of about 120 GiB or more (an H200) every engine sits on the card at once and the variants
run round robin. On a smaller card (an 80 GiB H100: 0.2 of it left an engine 0.04 GiB of KV cache
beside the 14 GiB of weights, measured, and no share fits all four engines) the HF engine runs its
variants first, alone, and is released; then the three vLLM engines load at 0.29 of the card each.

A run longer than one sitting allows (a lent GPU's calls end at 10 minutes) is split in two on the same
card, one engine family each, the second merging the first's record and printing the whole table:

    python3 benchmarks/vllm_gpu.py --tokenizer T --engines hf --record /tmp/hf.json
    python3 benchmarks/vllm_gpu.py --tokenizer T --engines vllm --merge /tmp/hf.json

`--rows` times some rows only (an engine none of whose rows is named is not loaded); with `--skip`
it re-times one column without the rest of the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEVER = "<never stop here>"
NEEDS_GIB = 120  # 3 engines x 0.2 of an H200 (28 GiB each) + the HF engine's 8B model and 32k prefill (19 GiB)
VLLM_VARIANTS = (
    "vllm (defaults)",
    "vllm enforce_eager",
    "qk_ablated_vllm none",
    "qk_ablated_vllm ablate=massive",
    "qk_ablated_vllm quant=int4",
)
HF_VARIANTS = ("qk_ablated (HF) none", "qk_ablated (HF) ablate=massive")


def save_model(tokenizer_dir: str, layers: int, folder: Path) -> None:
    """The random 8B-shaped model (benchmarks/gpu.py's) and the tokenizer, as a folder vLLM loads."""
    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu import build

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build(len(tokenizer), layers, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (the embedded model's)")
    parser.add_argument("--folder", default="/tmp/llama8b-shaped", help="where the random model is saved")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-repeats", type=int, default=1)
    parser.add_argument(
        "--memory",
        type=float,
        default=0.0,
        help="gpu_memory_utilization of each vLLM engine (default 0.2, 0.29 under 120 GiB)",
    )
    parser.add_argument("--skip", default="", help="comma-separated workloads to leave out")
    parser.add_argument("--engines", choices=("all", "hf", "vllm"), default="all", help="which engines run")
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated rows to time (default: every row); an engine none of whose rows is named is not loaded",
    )
    parser.add_argument("--record", help="a JSON file the timings so far are written to after every run")
    parser.add_argument("--merge", help="an earlier --record of the same card whose rows join the table")
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()] or [*VLLM_VARIANTS, *HF_VARIANTS]
    unknown = [row for row in rows if row not in (*VLLM_VARIANTS, *HF_VARIANTS)]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join((*VLLM_VARIANTS, *HF_VARIANTS))}")

    import torch
    import vllm
    from lm_eval import simple_evaluate
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401  (our tasks)
    from qk_ablate import task_data
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.lm import QKAblatedLM
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    total = torch.cuda.mem_get_info()[1] / 2**30
    side_by_side = (total >= NEEDS_GIB or args.layers < 32) and args.engines == "all"
    memory = args.memory or (0.2 if side_by_side else 0.29)
    folder = Path(args.folder)
    started = time.perf_counter()
    if not (folder / "config.json").exists():
        save_model(args.tokenizer, args.layers, folder)
    print(f"model folder ready in {time.perf_counter() - started:.0f}s", flush=True)
    window = 32768 + 1024
    engine: dict[str, Any] = {"max_model_len": window, "gpu_memory_utilization": memory, "seed": 0}
    engine |= {"batch_size": "auto", "dtype": "bfloat16"}
    loads: dict[str, float] = {}

    def load(name: str, make):
        began = time.perf_counter()
        lm = make()
        loads[name] = time.perf_counter() - began
        print(f"loaded {name} in {loads[name]:.0f}s", flush=True)
        return lm

    def vllm_variants() -> dict[str, tuple[Any, InterventionSpec | None]]:
        variants: dict[str, tuple[Any, InterventionSpec | None]] = {}
        if "vllm (defaults)" in rows:
            variants["vllm (defaults)"] = (
                load("vllm (defaults)", lambda: VLLM(pretrained=str(folder), **engine)),
                None,
            )
        if "vllm enforce_eager" in rows:
            eager = load("vllm enforce_eager", lambda: VLLM(pretrained=str(folder), enforce_eager=True, **engine))
            variants["vllm enforce_eager"] = (eager, None)
        specs = {
            "qk_ablated_vllm none": InterventionSpec(),
            "qk_ablated_vllm ablate=massive": InterventionSpec(ablate="massive"),
            "qk_ablated_vllm quant=int4": InterventionSpec(quant="int4"),
        }
        if any(name in rows for name in specs):
            ours = load("qk_ablated_vllm", lambda: QKAblatedVLLM(pretrained=str(folder), **engine))
            variants |= {name: (ours, spec) for name, spec in specs.items() if name in rows}
        return variants

    def hf_variants() -> dict[str, tuple[Any, InterventionSpec | None]]:
        if not any(name in rows for name in HF_VARIANTS):
            return {}
        hf = load(
            "qk_ablated (HF)",
            lambda: QKAblatedLM(
                pretrained=str(folder), dtype="bfloat16", device="cuda", batch_size=32, max_length=window
            ),
        )
        specs = {
            "qk_ablated (HF) none": InterventionSpec(),
            "qk_ablated (HF) ablate=massive": InterventionSpec(ablate="massive"),
        }
        return {name: (hf, spec) for name, spec in specs.items() if name in rows}

    names = [name for name in (*VLLM_VARIANTS, *HF_VARIANTS) if name in rows]
    # one phase with every engine on the card; on a smaller card the HF engine runs first, alone, and
    # is released before the three vLLM engines load (each then takes 0.29 of the card)
    plans = {
        "all": ("HF engine first, then the vLLM engines", [hf_variants, vllm_variants]),
        "hf": ("HF engine only", [hf_variants]),
        "vllm": ("vLLM engines only", [vllm_variants]),
    }
    plan, phases = plans[args.engines]
    if side_by_side:
        plan, phases = "engines side by side", [lambda: {**vllm_variants(), **hf_variants()}]
    card = torch.cuda.get_device_name()
    print(f"{card}, {total:.0f} GiB: {plan}", flush=True)
    packaged = Path(task_data.__file__).parent / "gsm8k_test.jsonl"
    metadata = {"pretrained": str(folder), "gsm8k_path": str(packaged)}
    metadata["imdb_path"] = str(ROOT / "tests" / "data" / "imdb_test_200.csv")
    manager = TaskManager(metadata=metadata)
    workloads = {
        "generate": dict(
            tasks=["qk_gsm8k"],
            limit=args.problems,
            gen_kwargs={"max_gen_toks": args.tokens, "until": [NEVER], "ignore_eos": True},
        ),
        "loglikelihood": dict(tasks=["imdb"], limit=None),
        "passkey_32k": dict(tasks=["passkey_32k"], limit=1),
    }
    skipped = set(filter(None, args.skip.split(",")))
    seconds: dict[str, dict[str, list[float]]] = {work: {name: [] for name in names} for work in workloads}
    scores: dict[str, dict[str, Any]] = {work: {} for work in workloads}
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        if earlier["card"] != card:
            sys.exit(f"--merge {args.merge} was measured on {earlier['card']}, this card is {card}")
        loads |= earlier["loads"]
        for work, by_name in earlier["seconds"].items():
            for name, values in by_name.items():
                seconds[work][name] = seconds[work].get(name) or values
                if name in earlier["scores"][work]:
                    scores[work].setdefault(name, earlier["scores"][work][name])
        print(f"merged the rows measured earlier on this card: {args.merge}", flush=True)

    def record() -> None:
        if args.record:
            state = {"card": card, "loads": loads, "seconds": seconds, "scores": scores, "args": vars(args)}
            Path(args.record).write_text(json.dumps(state, indent=1, default=str))

    def run(work: str, name: str, lm: Any, spec: InterventionSpec | None, limit: int | None) -> dict:
        if spec is not None:
            lm.use(spec)
        if spec is None:  # plain vLLM: every run prefills afresh, as a first evaluation does (not the
            lm.model.reset_prefix_cache()  # blocks cached by the warm-up and earlier rounds of the same prompts)
        kwargs = {**workloads[work], "limit": limit}
        if name in HF_VARIANTS and work == "generate":  # HF generation stops at EOS unless told a minimum
            kwargs["gen_kwargs"] = {"max_gen_toks": args.tokens, "min_new_tokens": args.tokens, "until": [NEVER]}
        return simple_evaluate(model=lm, task_manager=manager, verbosity="ERROR", **kwargs)

    def table() -> None:
        """The table so far (printed after each workload, so a run cut short keeps what it measured)."""
        done = [work for work in workloads if work not in skipped and any(seconds[work].values())]
        print(f"\n{card}, torch {torch.__version__}, vllm {vllm.__version__}, {args.layers} layers, bf16")
        print("load seconds: " + ", ".join(f"{name} {value:.0f}" for name, value in loads.items()))
        print(f"\n| variant | {' | '.join(done)} |")
        print("|---|" + "---:|" * len(done))
        for name in (*VLLM_VARIANTS, *HF_VARIANTS):  # the rows run here and the rows merged
            if not any(seconds[work].get(name) for work in done):
                continue
            cells = []
            for work in done:
                base = statistics.median(seconds[work].get("vllm (defaults)") or [float("nan")])
                mine = statistics.median(seconds[work].get(name) or [float("nan")])
                notes = [] if math.isnan(base) else [f"{mine / base:.2f}x"]  # no baseline run: no ratio
                if work == "generate":
                    notes.append(f"{args.problems * args.tokens / mine:,.0f} tok/s")
                cells.append(f"{mine:.2f} s ({', '.join(notes)})" if notes else f"{mine:.2f} s")
            print(f"| {name} | {' | '.join(cells)} |")
        print("\nscores: " + repr(scores), flush=True)

    for phase in phases:
        variants = phase()
        for work, options in workloads.items():
            if work in skipped:
                continue
            for name, (lm, spec) in variants.items():  # untimed: vLLM's and our first-use compilations
                run(work, name, lm, spec, 1 if work == "passkey_32k" else 4)
            for round_ in range(max(args.repeats, args.hf_repeats)):
                for name, (lm, spec) in variants.items():
                    if round_ >= (args.hf_repeats if name in HF_VARIANTS else args.repeats):
                        continue
                    torch.cuda.synchronize()
                    began = time.perf_counter()
                    results = run(work, name, lm, spec, options["limit"])
                    torch.cuda.synchronize()
                    seconds[work][name].append(time.perf_counter() - began)
                    task = options["tasks"][0]
                    scores[work][name] = {k: v for k, v in results["results"][task].items() if k != "alias"}
                    print(
                        f"{work} round {round_} {name}: {seconds[work][name][-1]:.1f}s {scores[work][name]}", flush=True
                    )
                    record()
            table()
        if len(phases) > 1:  # the HF engine's memory goes back before the vLLM engines load
            variants.clear()
            lm = spec = None  # the loops' last engine
            gc.collect()
            torch.cuda.empty_cache()
            print(
                f"released: {torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated by this process", flush=True
            )


if __name__ == "__main__":
    main()
