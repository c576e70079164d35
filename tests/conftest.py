"""Tiny random models of every supported architecture, built from configs (never the Hub)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB = 128, 4, 2, 32, 2, 128

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    head_dim=HEAD_DIM,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

ROPE_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, query_pre_attn_scalar=HEAD_DIM, sliding_window=8),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**_COMMON, query_pre_attn_scalar=HEAD_DIM, sliding_window=8),
    "phi3": lambda: transformers.Phi3Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"}),
    "olmo2": lambda: transformers.Olmo2Config(**_COMMON),
}
NON_ROPE_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=128,
        num_attention_heads=HEADS, max_position_embeddings=512, word_embed_proj_dim=HIDDEN,
    ),
}
MASSIVE_DIMS = (1, 1 + HEAD_DIM // 2)  # one rotary pair (rotate-half layout) in every head


def build(arch: str, attn: str | None = None, plant: bool = True, seed: int = 0) -> nn.Module:
    """A tiny random model; `plant` scales one rotary pair of every Q/K head, as in real RoPE models."""
    config = {**ROPE_CONFIGS, **NON_ROPE_CONFIGS}[arch]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    if plant:
        plant_massive(model)
    return model


@torch.no_grad()
def plant_massive(model: nn.Module, factor: float = 25.0) -> None:
    """Scale the weight rows that produce MASSIVE_DIMS of every Q and K head."""
    from qk_ablate.arch import find_layout

    for site in find_layout(model).sites:
        for name in ("q", "k"):
            source = site.sources[name]
            proj = _projection(site.module, name)
            offset = source.start if proj is getattr(site.module, "qkv_proj", None) or proj is getattr(site.module, "c_attn", None) else 0
            rows = torch.tensor([offset + h * site.head_dim + d for h in range(source.num_heads) for d in MASSIVE_DIMS])
            weight = proj.weight
            if isinstance(proj, nn.Linear):
                weight[rows] *= factor
            else:  # GPT-2 Conv1D stores [in, out]
                weight[:, rows] *= factor


def _projection(module: nn.Module, name: str) -> nn.Module:
    for attr in (f"{name}_proj", "qkv_proj", "c_attn"):
        if isinstance(getattr(module, attr, None), nn.Module):
            return getattr(module, attr)
    raise AttributeError(name)


@pytest.fixture(params=sorted(ROPE_CONFIGS))
def rope_arch(request) -> str:
    return request.param


@pytest.fixture(params=sorted(NON_ROPE_CONFIGS))
def non_rope_arch(request) -> str:
    return request.param


def prompts(batch: int = 2, length: int = 24, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2 tokenizer (loaded once per test session)."""
    from qk_ablate.embedded import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def toy():
    """A second, different tokenizer: a SentencePiece-like BPE (Metaspace, small vocab, adds a BOS) trained here, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "A quick brown fox jumps over the lazy dog near the green river bank.",
        "Grass grows in spring; the sky turns blue and yellow flowers open.",
        "Numbers like 12345 and 67890 appear in tables, keys and passwords.",
        "One of the special magic numbers for brave-lantern is: 1234567.",
        "What is the answer? Remember it, then go there and come back again.",
    ] * 20
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # A chat template unlike SmolLM2's (no default system turn), for the chat-template length tests.
    fast.chat_template = (
        "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
    )
    return fast


def token_count(tokenizer, text: str) -> int:
    """Tokens as lm-eval's tokenizer wrapper counts them, independent of the builders' own counter."""
    return len(tokenizer(text)["input_ids"])


def docs_digest(docs) -> str:
    return hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="session")
def essay_dir(tmp_path_factory):
    """A folder of .txt essays (real prose: the 200 committed IMDB reviews, one file each)."""
    import csv

    folder = tmp_path_factory.mktemp("essays")
    with open(Path(__file__).parent / "data" / "imdb_test_200.csv", newline="", encoding="utf-8") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            (folder / f"essay_{i:03d}.txt").write_text(row["review"].replace("<br />", " "), encoding="utf-8")
    return folder
