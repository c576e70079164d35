"""Every exact-length task at every length, in two different tokenizers, with and without a chat
template: the prompt lm-eval sends (template included) plus the generation budget never exceeds
the nominal length and falls short of it by less than 1%. Counted here independently of the
builders' own counters."""

from __future__ import annotations

from functools import partial

import pytest
from conftest import docs_digest

from qk_ablate.task_data.ctxqa import build_ctxqa_docs
from qk_ablate.task_data.haystack import essay_haystack
from qk_ablate.task_data.lengths import LENGTHS
from qk_ablate.task_data.niah import build_niah_docs
from qk_ablate.task_data.passkey import build_passkey_docs
from qk_ablate.task_data.tokens import PromptFrame, prompt_frame

FAMILIES = {  # name -> (builder, generation budget = the task YAML's max_gen_toks)
    "passkey": (build_passkey_docs, 8),
    "niah": (build_niah_docs, 12),
    "niah_multikey": (partial(build_niah_docs, num_distractors=3), 12),
    "niah_essay": (None, 12),
    "ctxqa": (build_ctxqa_docs, 16),
}


def _builder(family, essay_dir):
    if family == "niah_essay":
        return partial(build_niah_docs, haystack=essay_haystack(str(essay_dir)))
    return FAMILIES[family][0]


def _sent(tokenizer, text: str, chat: bool) -> int:
    """Tokens of the prompt as lm-eval sends it: chat-templated (HFLM.apply_chat_template) or not."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return len(tokenizer(text)["input_ids"])


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("name", list(LENGTHS))
@pytest.mark.parametrize("which", ["smol", "toy"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_plus_budget_within_one_percent_below_nominal(family, which, name, chat, request, essay_dir):
    tokenizer = request.getfixturevalue(which)
    length, budget = LENGTHS[name], FAMILIES[family][1]
    frame = prompt_frame(tokenizer, {"apply_chat_template": True}) if chat else PromptFrame()
    docs = _builder(family, essay_dir)(tokenizer, length, num_docs=2, gen_budget=budget, frame=frame)
    for doc in docs:
        sent = _sent(tokenizer, doc["input"], chat)
        assert sent == doc["n_tokens"]
        assert 0.99 * length <= sent + budget <= length, (family, which, name, chat, sent)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_documents_other_seed_other_documents(family, smol, essay_dir):
    build = partial(_builder(family, essay_dir), smol, 2048, num_docs=4, gen_budget=FAMILIES[family][1])
    assert docs_digest(build(seed=0)) == docs_digest(build(seed=0))
    assert docs_digest(build(seed=0)) != docs_digest(build(seed=1))


def test_chat_frame_matches_what_lm_eval_sends(smol):
    """The frame renders exactly lm-eval's zero-shot chat prompt, system instruction included."""
    from lm_eval.api.utils import Message, multiturn_to_singleturn

    frame = prompt_frame(smol, {"apply_chat_template": True, "system_instruction": "Be brief."})
    messages = multiturn_to_singleturn([Message("system", "Be brief."), Message("user", "Q?")])
    expected = smol.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert frame.wrap("Q?") == expected and "Be brief." in expected
    plain = prompt_frame(smol, {"system_instruction": "Be brief. "})
    assert plain.wrap("Q?") == "Be brief. Q?"  # lm-eval joins them with nothing


def test_chat_frame_off_values_and_missing_template(toy):
    from transformers import PreTrainedTokenizerFast

    from qk_ablate.errors import QKAblateError

    for off in (None, False, "false", "0", ""):
        assert not prompt_frame(toy, {"apply_chat_template": off}).chat
    bare = PreTrainedTokenizerFast(tokenizer_object=toy.backend_tokenizer)
    with pytest.raises(QKAblateError, match="no chat template"):
        prompt_frame(bare, {"apply_chat_template": True})


def test_cli_hands_chat_template_flags_to_the_tasks():
    """`lm_eval --apply_chat_template --system_instruction ...` reach the task builders' metadata."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    import qk_ablate.plugin  # noqa: F401

    cfg = EvaluatorConfig(
        tasks="passkey_1k",
        model_args={"pretrained": "smollm2-135m"},
        apply_chat_template=True,
        system_instruction="Be brief.",
    )
    manager = cfg.process_tasks(cfg.metadata)
    assert manager is not None
    assert cfg.metadata["apply_chat_template"] is True and cfg.metadata["system_instruction"] == "Be brief."
