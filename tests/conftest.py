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

_NO_HEAD_DIM = {k: v for k, v in _COMMON.items() if k != "head_dim"}
_FALCON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    alibi=False,
)

ROPE_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, query_pre_attn_scalar=HEAD_DIM, sliding_window=8),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**_COMMON, query_pre_attn_scalar=HEAD_DIM, sliding_window=8),
    "phi3": lambda: transformers.Phi3Config(**_NO_HEAD_DIM),
    "olmo2": lambda: transformers.Olmo2Config(**_COMMON),
    # partial rotary: Phi-2 rotates half of each head, Pythia and StableLM a quarter
    "phi": lambda: transformers.PhiConfig(**_NO_HEAD_DIM, partial_rotary_factor=0.5),
    "stablelm": lambda: transformers.StableLmConfig(**_NO_HEAD_DIM, partial_rotary_factor=0.25, qk_layernorm=True),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **{k: v for k, v in _NO_HEAD_DIM.items() if k != "num_key_value_heads"}, rotary_pct=0.25
    ),
    # Falcon-40B/180B (KV groups), Falcon-7B (multi-query), and the original per-head layout
    "falcon": lambda: transformers.FalconConfig(**_FALCON, new_decoder_architecture=True, num_kv_heads=KV_HEADS),
    "falcon_mq": lambda: transformers.FalconConfig(**_FALCON, multi_query=True),
    "falcon_mha": lambda: transformers.FalconConfig(**_FALCON, multi_query=False),
    # multi-head latent attention: heads of [nope 16 | rope 16] for Q/K, V of 24 dims, Q through a LoRA
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        **{**_NO_HEAD_DIM, "num_key_value_heads": HEADS},
        q_lora_rank=48,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=24,
        first_k_dense_replace=LAYERS,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
    ),
}
NO_POST_ROPE = {"falcon", "falcon_mq", "falcon_mha"}  # attention computed inline, not through AttentionInterface
NON_ROPE_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512
    ),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        ffn_dim=128,
        num_attention_heads=HEADS,
        max_position_embeddings=512,
        word_embed_proj_dim=HIDDEN,
    ),
}
MASSIVE_DIMS = (1, 1 + HEAD_DIM // 2)  # one rotary pair (rotate-half layout) in every head of a full-rotary model


def build(arch: str, attn: str | None = None, plant: bool = True, seed: int = 0) -> nn.Module:
    """A tiny random model; `plant` scales one rotary pair of every Q/K head, as in real RoPE models."""
    config = {**ROPE_CONFIGS, **NON_ROPE_CONFIGS}[arch]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    if plant:
        plant_massive(model)
    return model


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every layer's attention module, in order (found by name, independently of qk_ablate.engines.hf.arch)."""
    names = ("self_attn", "attention", "self_attention", "attn")
    return [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in names and n.split(".")[-2].isdigit()]


def rotary_pair(model: nn.Module, name: str) -> tuple[int, int]:
    """The planted rotary pair, as dims of a pre-RoPE head (MLA: its rotary dims start after the nope ones)."""
    config = model.config
    if config.model_type == "deepseek_v3":  # interleaved pairs (2i, 2i+1); K is the 16-dim rotary head alone
        start = config.qk_nope_head_dim if name == "q" else 0
        return start + 2, start + 3
    if config.model_type not in ROPE_CONFIGS:
        return MASSIVE_DIMS
    half = config.rope_parameters.get("partial_rotary_factor", 1.0) * HEAD_DIM // 2
    return 1, 1 + int(half)


def post_span(model: nn.Module) -> tuple[int, int] | None:
    """The dims a post-RoPE Q/K head's selection runs over: MLA's rotary dims only (None: all)."""
    config = model.config
    if config.model_type == "deepseek_v3":
        return config.qk_nope_head_dim, config.qk_nope_head_dim + config.qk_rope_head_dim
    return None


def projection_columns(model: nn.Module, attn: nn.Module, name: str) -> tuple[nn.Module, torch.Tensor]:
    """The projection whose output holds `name` of this layer, and each (head, dim)'s column in it: [H, D]."""
    config, d = model.config, HEAD_DIM
    kind = config.model_type
    if kind == "deepseek_v3":
        qk, rank = config.qk_nope_head_dim + config.qk_rope_head_dim, config.kv_lora_rank
        if name == "q":
            return attn.q_b_proj, torch.arange(HEADS * qk).view(HEADS, qk)
        if name == "k":
            return attn.kv_a_proj_with_mqa, rank + torch.arange(config.qk_rope_head_dim)[None]
        width = config.qk_nope_head_dim + config.v_head_dim
        return attn.kv_b_proj, torch.arange(HEADS)[:, None] * width + config.qk_nope_head_dim + torch.arange(
            config.v_head_dim
        )
    heads = torch.arange(HEADS)[:, None]
    dims = torch.arange(d)[None]
    slot = "qkv".index(name)
    if kind == "gpt_neox" or (kind == "falcon" and not config.multi_query and not config.new_decoder_architecture):
        return attn.query_key_value, heads * 3 * d + slot * d + dims
    if kind == "falcon" and config.new_decoder_architecture:
        per = HEADS // config.num_kv_heads
        groups = torch.arange(config.num_kv_heads)[:, None]
        if name == "q":
            return attn.query_key_value, (heads // per) * (per + 2) * d + (heads % per) * d + dims
        return attn.query_key_value, groups * (per + 2) * d + (per + slot - 1) * d + dims
    if kind == "falcon":  # multi-query: [Q (H heads) | K (1) | V (1)]
        offset = (0, HEADS * d, HEADS * d + d)[slot]
        return attn.query_key_value, offset + (heads if name == "q" else heads[:1]) * d + dims
    fused = getattr(attn, "qkv_proj", None) or getattr(attn, "c_attn", None)
    kv = KV_HEADS if kind not in NON_ROPE_CONFIGS else HEADS
    count = HEADS if name == "q" else kv
    if fused is not None:
        offset = (0, HEADS * d, HEADS * d + kv * d)[slot]
        return fused, offset + heads[:count] * d + dims
    return getattr(attn, f"{name}_proj"), heads[:count] * d + dims


@torch.no_grad()
def plant_massive(model: nn.Module, factor: float = 25.0) -> None:
    """Scale the weight rows that produce one rotary pair of every Q and K head."""
    for attn in attention_modules(model):
        for name in ("q", "k"):
            proj, columns = projection_columns(model, attn, name)
            rows = columns[:, list(rotary_pair(model, name))].flatten()
            if isinstance(proj, nn.Linear):
                proj.weight[rows] *= factor
            else:  # GPT-2 Conv1D stores [in, out]
                proj.weight[:, rows] *= factor


@pytest.fixture(params=sorted(ROPE_CONFIGS))
def rope_arch(request) -> str:
    return request.param


@pytest.fixture(params=sorted(set(ROPE_CONFIGS) - NO_POST_ROPE))
def post_arch(request) -> str:
    """RoPE architectures whose post-RoPE Q/K qk-ablate reaches."""
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
    from qk_ablate.models.embedded import load_tokenizer

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
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
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


def word_tokenizer():
    """A tiny offline word-level tokenizer whose ids fit the tiny models' vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(120)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_folder(factory: pytest.TempPathFactory, name: str = "tiny") -> Path:
    """A tiny Llama and the word tokenizer saved as a model folder (for sweeps, which load by path)."""
    folder = factory.mktemp(name)
    build("llama").save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder
