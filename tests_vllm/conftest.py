"""Tests of the vLLM engine: they run in the vLLM environment (`bash scripts/setup.sh --vllm`).

vLLM on a CPU reserves its KV cache up front; 1 GiB (and half the memory of a NUMA node for the
engine) leaves room for the HF model that the equivalence tests load beside it.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# On a GPU vLLM runs float32 attention in Triton, whose dots use TF32 unless told otherwise.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# gpu_memory_utilization of each engine: on a CPU host half a NUMA node (its KV cache is the 1 GiB
# above); on a GPU a share small enough for the engines of several test modules to sit side by side.
MEMORY = 0.12 if _cuda() else 0.5
if _cuda():  # asking torch initialised CUDA in this process, so vLLM must spawn its engine, not fork it
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def on_gpu() -> bool:
    """vLLM runs on a CUDA GPU here (the tests also run on a GPU host; CPU-only assertions check this)."""
    return _cuda()


def engine_mode() -> dict[str, bool]:
    """How the tests that check step planning rather than graphs start vLLM: eager on a CPU (compiling
    there adds minutes), vLLM's own default on a GPU (compiled, with CUDA graphs: what users run)."""
    return {} if on_gpu() else {"enforce_eager": True}


@contextmanager
def cores_for_ranks(ranks: int) -> Iterator[None]:
    """vllm-cpu binds each tensor-parallel rank to the cores `VLLM_CPU_OMP_THREADS_BIND` names, one
    list per rank, read when the engine starts; set for `ranks` here and restored after (a value
    left behind fails the next engine with another rank count)."""
    cpus = sorted(os.sched_getaffinity(0))
    before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(cpus[rank % len(cpus)]) for rank in range(ranks))
    try:
        yield
    finally:
        if before is None:
            del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = before


def vllm_engine(cls: type | None = None, **overrides):
    """The embedded model on qk_ablated_vllm (or the subclass `cls`) in float32, as these tests start it."""
    import qk_ablate.plugin  # noqa: F401  (lm-eval's registry entries)
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    args = {"pretrained": "smollm2-135m", "dtype": "float32", "max_model_len": 2048, "gpu_memory_utilization": MEMORY}
    return (cls or QKAblatedVLLM)(**{**args, "seed": 0, **overrides})


def hf_engine():
    """The HF engine on the same model, float32 on the CPU: what the vLLM engine is compared with."""
    from qk_ablate.engines.hf.lm import QKAblatedLM

    return QKAblatedLM(pretrained="smollm2-135m", dtype="float32", device="cpu", batch_size=8)


def loglikelihood_requests(contexts: list[str], endings: tuple[str, ...] = (" Paris", " 41872")) -> list:
    """lm-eval loglikelihood requests: every context with every ending."""
    from lm_eval.api.instance import Instance

    pairs = [(c, ending) for c in contexts for ending in endings]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def loglikelihood_gaps(hf, vllm, spec, requests: list) -> list[float]:
    """|vLLM - HF| per request under `spec` (attached to both engines), smallest first."""
    hf.use(spec)
    vllm.use(spec)
    ours = [value for value, _ in vllm.loglikelihood(requests, disable_tqdm=True)]
    theirs = [value for value, _ in hf.loglikelihood(requests, disable_tqdm=True)]
    return sorted(abs(a - b) for a, b in zip(ours, theirs))
