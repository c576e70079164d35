"""A generation that vLLM preempts (its KV cache full) is recomputed from its prompt and the tokens
it had generated; the engine recognises it by its registered prompt and edits it as the first time."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from conftest import engine_mode, vllm_engine

from qk_ablate.core.spec import InterventionSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_cache():
    """An engine whose KV cache holds about two of the prompts below at once (blocks of 32 tokens)."""
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    grid = [InterventionSpec(ablate="massive", stage=stage) for stage in ("prefill", "all")]
    return vllm_engine(
        max_model_len=1024,
        block_size=32,
        num_gpu_blocks_override=36,
        **engine_mode(),
        **QKAblatedVLLM.engine_settings(grid),  # on a GPU: PIECEWISE graphs, as a sweep of this grid starts it
    )


def _prompts(tokenizer, count: int = 8) -> list[list[int]]:
    with open(ROOT / "tests" / "data" / "imdb_test_200.csv", newline="", encoding="utf-8") as handle:
        reviews = [row["review"][:1400] for _, row in zip(range(count), csv.DictReader(handle))]
    return [tokenizer(f"Review: {r}\nWhat the reviewer thinks, in detail:").input_ids for r in reviews]


def _generate(lm, prompts: list[list[int]]) -> list[tuple[list[int], float]]:
    """48 greedy tokens per prompt through lm-eval's own generation call, with their log-probability."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, logprobs=0)
    outputs = lm._model_generate(requests=prompts, generate=True, sampling_params=params)
    return [(list(out.outputs[0].token_ids), out.outputs[0].cumulative_logprob) for out in outputs]


@pytest.mark.parametrize("stage", ["prefill", "all"])
def test_preempted_generations_equal_the_same_prompts_run_alone(small_cache, stage):
    """Tokens and their summed log-probability: a recompute that counted the generated tokens as
    prompt would move the selection and edit the generated keys, which these would show."""
    small_cache.use(InterventionSpec(ablate="massive", stage=stage))
    prompts = _prompts(small_cache.tokenizer)
    together = _generate(small_cache, prompts)
    assert small_cache.counts().recomputed > 0  # vLLM did preempt some of them
    alone = [_generate(small_cache, [prompt])[0] for prompt in prompts]
    assert [tokens for tokens, _ in together] == [tokens for tokens, _ in alone]
    assert max(abs(a - b) for (_, a), (_, b) in zip(together, alone)) <= 1e-3
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ  # the workers were reached with plain data
