"""tensor_parallel_size=2 on a model with one KV head: vLLM replicates it on both ranks.

Each rank edits its copy (the two copies must stay equal, or the ranks would attend to different
keys), and the selection tally counts the head once, so the results JSON reads as one process's.
A tiny random Llama (4 query heads, 1 KV head, a planted massive pair) with the embedded tokenizer;
the HF engine on the same folder is the reference.
"""

from __future__ import annotations

import pytest
import torch
from conftest import cores_for_ranks, loglikelihood_gaps, loglikelihood_requests, on_gpu, vllm_engine

from qk_ablate.core.spec import InterventionSpec

pytestmark = pytest.mark.skipif(
    on_gpu() and torch.cuda.device_count() < 2, reason="two tensor-parallel ranks need two GPUs here (issue 27)"
)

HEADS, HEAD_DIM, LAYERS = 4, 64, 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from qk_ablate.models.embedded import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=512,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        head_dim=HEAD_DIM,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a massive rotary pair in every Q/K head (its two halves: dims 30 and 62)
        for layer in model.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, HEADS), (layer.self_attn.k_proj, 1)):
                proj.weight.view(heads, HEAD_DIM, -1)[:, [30, 62]] *= 30
    path = tmp_path_factory.mktemp("one_kv_head")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engines(folder):
    from qk_ablate.engines.hf.lm import QKAblatedLM

    with cores_for_ranks(2):
        vllm = vllm_engine(pretrained=folder, max_model_len=512, tensor_parallel_size=2, enforce_eager=True)
    hf = QKAblatedLM(pretrained=folder, dtype="float32", device="cpu", batch_size=4)
    return hf, vllm


CONTEXTS = ["The capital of France is", "The pass key is 41872. Remember it. The pass key is"]


@pytest.mark.parametrize(
    "args",
    [{"ablate": "massive"}, {"ablate": "nonmassive"}, {"ablate": "massive", "select": "topk", "topk": 3}],
    ids=["massive", "nonmassive", "topk3"],
)
def test_two_ranks_sharing_one_kv_head_give_one_process_results_and_counts(engines, args):
    hf, vllm = engines
    gaps = loglikelihood_gaps(hf, vllm, InterventionSpec.from_args(args), loglikelihood_requests(CONTEXTS))
    assert gaps[-1] <= 1e-4
    chosen = {engine: engine.get_model_info()["qk_ablate_selected"] for engine in (hf, vllm)}
    assert chosen[vllm] == chosen[hf]
    # 4 inputs (no two share a context and a continuation length) x 2 layers x heads: the replicated KV
    # head counted once, not once per rank
    assert chosen[vllm]["k"]["heads"] == 4 * LAYERS * 1 and chosen[vllm]["q"]["heads"] == 4 * LAYERS * HEADS
    assert chosen[vllm]["k"]["dims_per_head"] > 0
