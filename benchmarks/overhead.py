"""Overhead of `qk_ablated` against the plain HFLM on the same prompts (not a test: prints figures).

One model is loaded once and shared by every variant; variants run round-robin, each workload
`--repeats` times, and the median wall time is reported together with the peak resident-memory
growth during the workload (sampled every 2 ms), both as ratios against plain HFLM. On CPU the
script re-runs itself with glibc's mmap threshold fixed at 64 KiB, so every tensor buffer is
mapped and unmapped on its own and RSS follows live memory instead of the allocator's cache.

    .venv/bin/python benchmarks/overhead.py            # embedded SmolLM2-135M on CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import torch

from qk_ablate.models.loading import auto_device

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Peak RSS growth (bytes) while the block runs."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.growth = self.peak - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=1024, help="prompt length")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    args.device = auto_device(args.device)
    if not args.device.startswith("cuda") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.lm import QKAblatedLM
    from qk_ablate.models.loading import load_model

    model, tokenizer = load_model(args.model, args.device, args.dtype)
    common = dict(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=args.device)
    plain = HFLM(**common)
    ours = QKAblatedLM(**common)

    generator = torch.Generator().manual_seed(0)
    contexts = []
    for i in range(args.prompts):
        ids = torch.randint(100, 40000, (args.tokens,), generator=generator).tolist()
        contexts.append(tokenizer.decode(ids))
    gen = [
        Instance("generate_until", {}, (c, {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}), i)
        for i, c in enumerate(contexts)
    ]
    ll = [Instance("loglikelihood", {}, (c, " the answer"), i) for i, c in enumerate(contexts)]
    workloads = {
        "generate_until": lambda lm: lm.generate_until(gen, disable_tqdm=True),
        "loglikelihood": lambda lm: lm.loglikelihood(ll, disable_tqdm=True),
    }
    variants = {
        "plain HFLM": (plain, None),
        "ablate=none": (ours, InterventionSpec()),
        "ablate=massive": (ours, InterventionSpec(ablate="massive")),
        "quant=int4": (ours, InterventionSpec(quant="int4")),
    }
    times: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], list[int]] = {}
    for work_name, work in workloads.items():
        for name, (lm, spec) in variants.items():  # warm-up
            if spec is not None:
                lm.use(spec)
            work(lm)
        for _ in range(args.repeats):
            for name, (lm, spec) in variants.items():
                if spec is not None:
                    lm.use(spec)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                with PeakRSS() as memory:
                    started = time.perf_counter()
                    work(lm)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - started
                times.setdefault((work_name, name), []).append(elapsed)
                peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else memory.growth
                peaks.setdefault((work_name, name), []).append(peak)

    memory_kind = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS growth"
    print(
        f"model={args.model} device={args.device} dtype={args.dtype} prompts={args.prompts}x{args.tokens} tokens "
        f"batch_size={args.batch_size} repeats={args.repeats} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"| workload | variant | median s | time ratio | {memory_kind} MiB | memory ratio |")
    print("|---|---|---|---|---|---|")
    for work_name in workloads:
        base_t = statistics.median(times[(work_name, "plain HFLM")])
        base_m = max(peaks[(work_name, "plain HFLM")])
        for name in variants:
            t = statistics.median(times[(work_name, name)])
            m = max(peaks[(work_name, name)])
            print(f"| {work_name} | {name} | {t:.2f} | {t / base_t:.3f} | {m / 2**20:.0f} | {m / max(base_m, 1):.3f} |")


if __name__ == "__main__":
    main()
