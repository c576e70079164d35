"""GPU cost of qk-ablate at a user's scale, as ratios against plain Hugging Face in the same run.

One script, one card, a Llama-3.1-8B-shaped random bf16 model (SDPA), three workloads:

* **generate**: `qk_gsm8k` through lm-eval in-process (`--problems` problems, batch 16, 256-token
  generations, greedy), plain `HFLM` against `qk_ablated` with none / `ablate=massive` /
  `quant=int4`, round-robin, median of `--gen-repeats`. Vocabulary = the tokenizer's (SmolLM2's).
* **prefill**: one forward with last-position logits at each of `--tokens`, plain against every
  intervention attached, median of `--repeats` after a warm-up (which also compiles).
* **loglikelihood**: one request of N tokens with an 8-token continuation through lm-eval's
  `_loglikelihood_tokens`: plain `HFLM` (logits at every position) against `qk_ablated` (logits
  at the scored positions only), peak GPU memory and the loglikelihood itself, beside a
  last-position prefill's peak. Llama-3's 128,256-token vocabulary, as the logits are what costs.

    python3 benchmarks/gpu.py --tokenizer .gpu/tokenizer            # everything, printed as markdown

Everything at the defaults (the issue's 64 problems, 5 rounds) took 27 minutes on an H100.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from qk_ablate import InterventionSpec, attach
from qk_ablate.core import fused
from qk_ablate.core.step import TensorSite

LLAMA3_VOCAB = 128256
PREFILL = {
    "ablate=none": InterventionSpec(),
    "ablate=massive": InterventionSpec(ablate="massive"),
    "ablate=nonmassive": InterventionSpec(ablate="nonmassive"),
    "quant=int4": InterventionSpec(quant="int4"),
    "quant=int4,axis=channel,kv,protect": InterventionSpec(
        quant="int4", quant_axis="channel", quant_targets="kv", protect="massive"
    ),
}
# every generation exactly 256 tokens (a random model's stop strings and EOS would end them at random)
FIXED_LENGTH = {"max_gen_toks": 256, "min_new_tokens": 256, "until": ["<never stop here>"]}
GENERATE = {
    "ablate=none": InterventionSpec(),
    "ablate=massive": InterventionSpec(ablate="massive"),
    "quant=int4": InterventionSpec(quant="int4"),
}


DEVICE = "cuda"
WIDTH = 4096  # --smoke shrinks the model and runs on the CPU: a check of this script, not a measurement


def build(
    vocab: int, layers: int, tokenizer: transformers.PreTrainedTokenizerBase, kv_heads: int = 8
) -> torch.nn.Module:
    """A random Llama-3.1-8B-shaped bf16 model on the GPU with one massive rotary pair per Q/K head
    (`kv_heads` other than 8 for tensor-parallel checks)."""
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=WIDTH,
        intermediate_size=WIDTH * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=kv_heads,
        head_dim=128,
        max_position_embeddings=131072 + 256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    with torch.no_grad():  # a planted massive pair (dims 60 and 124 of every head), as real models have
        for layer in model.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, 32), (layer.self_attn.k_proj, kv_heads)):
                weight = proj.weight.view(heads, 128, -1)
                weight[:, [60, 124]] *= 30
    return model.eval()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 1


def reset_peak() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[], object]) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def generate(model: torch.nn.Module, tokenizer, problems: int, repeats: int) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from qk_ablate import task_data
    from qk_ablate.engines.hf.lm import QKAblatedLM
    from qk_ablate.paths import tasks_dir

    packaged = Path(task_data.__file__).parent / "gsm8k_test.jsonl"  # the GSM8K test split shipped in the wheel
    manager = TaskManager(include_path=tasks_dir(), metadata={"gsm8k_path": str(packaged)})
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device=DEVICE)
    ours = QKAblatedLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device=DEVICE)

    inside = {"s": 0.0}  # seconds spent in model.generate (the decode loop), apart from lm-eval's own work

    def timing(lm) -> None:
        original = lm._model_generate

        def generate_timed(*args, **kwargs):
            sync()
            started = time.perf_counter()
            out = original(*args, **kwargs)
            sync()
            inside["s"] += time.perf_counter() - started
            return out

        lm._model_generate = generate_timed

    timing(plain)
    timing(ours)

    def run(lm, limit: int = problems) -> tuple[float, float]:
        inside["s"] = 0.0
        total = timed(
            lambda: lm_eval.simple_evaluate(
                model=lm,
                tasks=["qk_gsm8k"],
                limit=limit,
                task_manager=manager,
                gen_kwargs=FIXED_LENGTH,
                verbosity="ERROR",
            )
        )
        return total, inside["s"]

    ours.use(InterventionSpec())
    run(plain, limit=min(problems, 16))  # warm-up: kernels, task build, caches
    for spec in GENERATE.values():  # and each variant's first prefill, which compiles its fused kernels
        ours.use(spec)
        run(ours, limit=min(problems, 16))
    variants: dict[str, InterventionSpec | None] = {"plain hf": None, **GENERATE}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats):  # round-robin, each round in a rotated order: drifts hit every variant alike
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            spec = variants[name]
            ours.use(spec or InterventionSpec())
            times[name].append(run(plain if spec is None else ours))
    ours.use(InterventionSpec())
    print(f"\n### Batched generation: qk_gsm8k, {problems} problems, batch 16, 256-token generations\n")
    print(
        "Per run: seconds in all (in `model.generate`). Ratios of the time in `model.generate`: of the medians, "
        "and of the best runs (noise only ever adds time).\n"
    )
    print(
        "| variant | runs, s | median s in generate | ratio of medians | ratio of best runs |\n|---|---|---:|---:|---:|"
    )
    base = [f(g for _, g in times["plain hf"]) for f in (statistics.median, min)]
    for name, values in times.items():
        median, best = (f(g for _, g in values) for f in (statistics.median, min))
        runs = ", ".join(f"{t:.2f} ({g:.2f})" for t, g in values)
        print(f"| {name} | {runs} | {median:.2f} | {median / base[0]:.3f} | {best / base[1]:.3f} |")


def prefill(model: torch.nn.Module, tokens: list[int], repeats: int) -> None:
    print(
        f"\n### Prefill: one forward, last-position logits, batch 1 (median of {repeats} round-robin runs after a warm-up)\n"
    )
    print("| tokens | variant | median s | time ratio | peak GiB | memory ratio |\n|---|---|---:|---:|---:|---:|")
    vocab = model.config.vocab_size
    for length in tokens:
        ids = torch.randint(0, vocab, (1, length), device=DEVICE)
        mask = torch.ones_like(ids)  # as lm-eval passes one: the interventions then take the masked path
        variants = {"plain": None, **PREFILL}
        times: dict[str, list[float]] = {name: [] for name in variants}
        peaks = dict.fromkeys(variants, 0)
        for repeat in range(repeats + 1):  # round-robin, so a drift of the card's clocks hits every variant alike
            for name, spec in variants.items():
                reset_peak()
                with torch.no_grad():
                    if spec is None:
                        elapsed = timed(lambda: model(ids, attention_mask=mask, logits_to_keep=1, use_cache=False))
                    else:
                        with attach(model, spec):
                            elapsed = timed(lambda: model(ids, attention_mask=mask, logits_to_keep=1, use_cache=False))
                if repeat:  # the first is a warm-up (and compiles)
                    times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak_bytes())
        rows = {name: (statistics.median(times[name]), peaks[name]) for name in variants}
        base_t, base_m = rows["plain"]
        for name, (t, m) in rows.items():
            print(f"| {length} | {name} | {t:.3f} | {t / base_t:.3f} | {m / 2**30:.1f} | {m / base_m:.3f} |")


def kernel_profile(model: torch.nn.Module, length: int) -> None:
    """Where each variant's prefill spends GPU time: attention kernels, matmuls, and everything else
    (the intervention's own kernels among it), summed over one profiled forward after a warm-up.

    Wall-clock ratios of long forwards move by a few percent with the card's clocks, which follow
    its power draw, which follows the data (fake-quantized Q/K make the attention kernel draw less);
    the summed kernel time of the non-matmul, non-attention kernels is the intervention's own cost.
    """
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, model.config.vocab_size, (1, length), device=DEVICE)
    activity = ProfilerActivity.CUDA if DEVICE == "cuda" else ProfilerActivity.CPU
    print(f"\n### Kernel time of one prefill, {length} tokens (ms, summed over kernels)\n")
    print(
        "| variant | wall | all kernels | attention | matmul | other | other - plain's other, % of plain |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    base_other = base_total = None
    kernel_times: dict[str, dict[str, float]] = {}  # per variant: ms per kernel
    for name, spec in {"plain": None, **PREFILL, "plain, again": None}.items():
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if spec is not None:
                stack.enter_context(attach(model, spec))
            forward = lambda: model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1, use_cache=False)
            timed(forward)  # warm-up (compiles)
            wall = timed(forward)
            with profile(activities=[activity]) as prof:
                forward()
                sync()
        groups = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
        kernel_times[name] = every = {}
        for event in prof.key_averages():
            spent = getattr(event, "device_time_total", 0.0) if DEVICE == "cuda" else event.self_cpu_time_total
            if not spent or (DEVICE == "cuda" and event.device_type != torch.autograd.DeviceType.CUDA):
                continue
            key = event.key.lower()
            group = (
                "attention"
                if any(w in key for w in ("flash", "fmha", "attention", "sdpa"))
                else "matmul"
                if any(
                    w in key for w in ("gemm", "cutlass", "nvjet", "sm90", "matmul", "aten::mm", "aten::bmm", "addmm")
                )
                else "other"
            )
            groups[group] += spent / 1000
            every[event.key[:90]] = every.get(event.key[:90], 0.0) + spent / 1000
        total = sum(groups.values())
        if base_other is None:
            base_other, base_total = groups["other"], total
        print(
            f"| {name} | {wall * 1000:.0f} | {total:.1f} | {groups['attention']:.1f} | {groups['matmul']:.1f} "
            f"| {groups['other']:.1f} | {100 * (groups['other'] - base_other) / base_total:+.2f} |"
        )
    print("\nKernels that took longest more than in plain's forward (ms; a kernel plain lacks counts in full):")
    plain = kernel_times.pop("plain")
    for name, every in kernel_times.items():
        diff = sorted(((k, v - plain.get(k, 0.0)) for k, v in every.items()), key=lambda kv: -kv[1])[:8]
        print(f"- {name}: " + "; ".join(f"`{k}` {v:+.2f}" for k, v in diff))


def attention_data(model: torch.nn.Module, tokens: list[int], repeats: int = 10) -> None:
    """The attention kernel alone, on the query/key/value of layer 1 as each variant hands them to it.

    The same SDPA call, shapes and layouts; only the values differ. A ratio away from 1 here is
    the kernel's speed (and the card's power-limited clock) depending on the data, which the
    prefill ratios above include, and which no implementation of the intervention can remove.
    """
    import torch.nn.functional as F

    variants = {
        "plain": InterventionSpec(),
        "ablate=massive": InterventionSpec(ablate="massive"),
        "ablate=nonmassive": InterventionSpec(ablate="nonmassive"),
        "quant=int4": InterventionSpec(quant="int4"),
    }
    print(
        f"\n### The attention kernel alone on each variant's Q/K/V (layer 1, median of {repeats} round-robin calls)\n"
    )
    print("| tokens | variant | median ms | ratio |\n|---:|---|---:|---:|")
    for length in tokens:
        ids = torch.randint(0, model.config.vocab_size, (1, length), device=DEVICE)
        captured: dict[str, tuple[torch.Tensor, ...]] = {}
        for name, spec in variants.items():
            seen: dict[str, torch.Tensor] = {}

            def keep(site: TensorSite, x: torch.Tensor, prompt: torch.Tensor | None) -> None:
                if site.layer == 1:
                    seen[site.name] = x.clone()  # as edited (after=True), in the layout the kernel got

            with torch.no_grad(), attach(model, spec, observer=keep, observe=("post",), after=True):
                model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1, use_cache=False)
            captured[name] = (seen["q"], seen["k"], seen["v"])
        times: dict[str, list[float]] = {name: [] for name in captured}
        for repeat in range(repeats + 1):
            for name, (q, k, v) in captured.items():
                elapsed = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
                if repeat:
                    times[name].append(elapsed)
        base = statistics.median(times["plain"])
        for name, values in times.items():
            print(
                f"| {length} | {name} | {1000 * statistics.median(values):.2f} | {statistics.median(values) / base:.3f} |"
            )
        del captured
        reset_peak()


def loglikelihood(model: torch.nn.Module, tokenizer, tokens: list[int]) -> None:
    from lm_eval.models.huggingface import HFLM

    from qk_ablate.engines.hf.lm import QKAblatedLM

    print("\n### Loglikelihood of one request (8-token continuation), peak GPU memory\n")
    print(
        "| tokens | last-position prefill GiB | plain HFLM GiB | qk_ablated GiB | qk_ablated massive GiB "
        "| ours / prefill | loglikelihood plain | ours |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=131072 + 128, device=DEVICE)
    ours = QKAblatedLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=131072 + 128, device=DEVICE)
    vocab = len(tokenizer)
    for length in tokens:
        generator = torch.Generator().manual_seed(length)
        request = torch.randint(0, vocab, (length + 1,), generator=generator).tolist()
        item = [(("", ""), request[:-8], request[-8:])]

        def peak(fn: Callable[[], object]) -> tuple[float, object]:
            reset_peak()
            try:
                with torch.no_grad():
                    value = fn()
            except torch.OutOfMemoryError:
                return float("nan"), "out of memory"
            return peak_bytes() / 2**30, value

        ids = torch.tensor([request[:-1]], device=DEVICE)
        prefill_peak, _ = peak(lambda: model(ids, logits_to_keep=1, use_cache=False))
        ours.use(InterventionSpec())
        plain_peak, plain_value = peak(lambda: plain._loglikelihood_tokens(item, disable_tqdm=True))
        ours_peak, ours_value = peak(lambda: ours._loglikelihood_tokens(item, disable_tqdm=True))
        ours.use(InterventionSpec(ablate="massive"))
        massive_peak, _ = peak(lambda: ours._loglikelihood_tokens(item, disable_tqdm=True))
        ours.use(InterventionSpec())
        show = lambda v: v if isinstance(v, str) else f"{v[0][0]:.4f}"
        print(
            f"| {length} | {prefill_peak:.1f} | {plain_peak:.1f} | {ours_peak:.1f} | {massive_peak:.1f} "
            f"| {ours_peak / prefill_peak:.3f} | {show(plain_value)} | {show(ours_value)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (SmolLM2's)")
    parser.add_argument("--parts", default="generate,prefill,attention,profile,loglikelihood")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--gen-repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ll-tokens", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--profile-tokens", type=int, nargs="+", default=[32768])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument(
        "--smoke", action="store_true", help="a small model on the CPU: checks the script, measures nothing"
    )
    args = parser.parse_args()
    if args.smoke:
        global DEVICE, WIDTH
        DEVICE, WIDTH = "cpu", 256
    parts = args.parts.split(",")
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke)"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {card}, "
        f"{args.layers} layers, bf16, SDPA, QK_ABLATE_COMPILE={fused.mode()}"
    )
    if "generate" in parts:
        model = build(len(tokenizer), args.layers, tokenizer)
        generate(model, tokenizer, args.problems, args.gen_repeats)
        del model
        reset_peak()
    if {"prefill", "attention", "profile", "loglikelihood"} & set(parts):
        model = build(LLAMA3_VOCAB, args.layers, tokenizer)
        if "prefill" in parts:
            prefill(model, args.tokens, args.repeats)
        if "attention" in parts:
            attention_data(model, args.tokens)
        if "profile" in parts:
            for length in args.profile_tokens:
                kernel_profile(model, length)
        if "loglikelihood" in parts:
            loglikelihood(model, tokenizer, args.ll_tokens)


if __name__ == "__main__":
    main()
