"""Tests of `qk-ablate quantize` and the CI example: they run in the quantizer's environment.

llm-compressor pins transformers<=5.17, so these live apart from tests/ (`bash scripts/setup.sh
--quant` builds .venv-quant; run `.venv-quant/bin/python -m pytest tests_quant`). The `slow`
marker comes from pyproject.toml, whose pytest settings apply to this folder too.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import transformers

try:
    import llmcompressor  # noqa: F401
except ImportError:
    raise pytest.UsageError(
        "tests_quant need llm-compressor: run `bash scripts/setup.sh --quant`, then "
        ".venv-quant/bin/python -m pytest tests_quant"
    ) from None

WORDS = 120


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over w0..w119 whose ids fit the tiny model (offline, no training)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(WORDS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Llama folder; every Linear's inputs (128, 256) divide by 32, 64 and 128, as int4 groups need."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def calibration_text(tmp_path_factory) -> Path:
    """Calibration text in the tiny tokenizer's words (GSM8K's words would all be one unknown token)."""
    rng = random.Random(0)
    paragraphs = [" ".join(f"w{rng.randrange(WORDS)}" for _ in range(40)) for _ in range(20)]
    path = tmp_path_factory.mktemp("calibration") / "words.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path
