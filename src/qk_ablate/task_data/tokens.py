"""Token counting and exact-length fitting, shared by every synthetic long-context builder.

Lengths are always counted in the evaluated model's own tokens, *with* the tokenizer's special
tokens (BOS, ...), which is what lm-eval's HFLM sends at most: a prompt that fits here fits there.

`fit_units` finds the largest number of filler units whose rendered prompt fits a token budget
with a handful of tokenizations: a secant step on the measured tokens-per-unit rate, then
bisection once the answer is bracketed. No arithmetic result is trusted without an exact count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qk_ablate.errors import QKAblateError

Counter = Callable[[Sequence[str]], list[int]]

_BATCH = 16  # documents per batched tokenizer call (bounds memory at 128k tokens each)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _wrapper_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def token_counter(tokenizer: Any, probe: str | None = None) -> Counter:
    """A function counting tokens of many texts at once, as `tokenizer(text)` would.

    Uses the Rust backend's parallel batch encoder when the tokenizer has one and it agrees with
    the Python wrapper on `probe` (a sample of the text to be counted); the wrapper otherwise.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):

        def fast(texts: Sequence[str]) -> list[int]:
            counts: list[int] = []
            for start in range(0, len(texts), _BATCH):
                chunk = list(texts[start : start + _BATCH])
                counts.extend(len(e.ids) for e in backend.encode_batch_fast(chunk, add_special_tokens=True))
            return counts

        sample = probe if probe is not None else "Probe text: The grass is green. 12345\nWhat is it?"
        if fast([sample])[0] == _wrapper_count(tokenizer, sample):
            return fast

    def slow(texts: Sequence[str]) -> list[int]:
        return [_wrapper_count(tokenizer, text) for text in texts]

    return slow


@dataclass(frozen=True)
class PromptFrame:
    """What lm-eval wraps around a document's text before the model sees it.

    Without a chat template the text goes in as it is. With `--apply_chat_template`, lm-eval
    (0.4.13, zero-shot, `ConfigurableTask.fewshot_context`) sends
    `tokenizer.apply_chat_template([system?, user], add_generation_prompt=True)`, and the template's
    tokens count against the length as much as the document's own.
    """

    tokenizer: Any = None
    chat: bool = False
    template: str | None = None  # a named template of a tokenizer that has several
    system: str | None = None

    def wrap(self, text: str) -> str:
        if not self.chat:
            return f"{self.system}{text}" if self.system else text  # lm-eval joins them with nothing
        messages = [{"role": "user", "content": text}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        kwargs = {"chat_template": self.template} if self.template else {}
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception:
            if not self.system:
                raise
            # lm-eval drops the system turn when the template rejects it; so do we.
            return self.tokenizer.apply_chat_template(
                messages[1:], tokenize=False, add_generation_prompt=True, **kwargs
            )


PLAIN = PromptFrame()  # the prompt exactly as written (no chat template)

_FALSE = ("", "0", "false", "no", "none", "off")


def prompt_frame(tokenizer: Any, metadata: dict[str, Any]) -> PromptFrame:
    """The frame of a run: `apply_chat_template` (True or a template name) and `system_instruction`.

    The `lm_eval` CLI puts both into the task metadata (qk_ablate.plugin); Python callers of
    `simple_evaluate(apply_chat_template=True)` pass `metadata={"apply_chat_template": True}` too.
    """
    value = metadata.get("apply_chat_template")
    system = metadata.get("system_instruction") or None
    chat = value is not None and value is not False and str(value).strip().lower() not in _FALSE
    if not chat:
        return PromptFrame(system=str(system) if system else None)
    if not getattr(tokenizer, "chat_template", None):
        raise QKAblateError(
            "apply_chat_template is set but the tokenizer has no chat template; "
            "drop --apply_chat_template or evaluate a model whose tokenizer ships one"
        )
    template = (
        str(value) if isinstance(value, str) and str(value).strip().lower() not in ("1", "true", "yes", "on") else None
    )
    return PromptFrame(tokenizer=tokenizer, chat=True, template=template, system=str(system) if system else None)


def framed_counter(count: Counter, frame: PromptFrame) -> Counter:
    """`count` of the texts as the model will see them inside `frame`."""
    if not frame.chat and not frame.system:
        return count
    return lambda texts: count([frame.wrap(text) for text in texts])


def check_length_args(length: int, num_docs: int, gen_budget: int) -> None:
    """Readable errors for the settings every exact-length task shares."""
    if num_docs < 1:
        raise QKAblateError(f"num_docs must be at least 1, got {num_docs}")
    if gen_budget < 0 or gen_budget >= length:
        raise QKAblateError(f"the generation budget ({gen_budget}) must be between 0 and the length ({length})")


def check_tokenizer(count: Counter, name: str = "the tokenizer") -> None:
    """Reject a tokenizer that cannot measure length (encodes text to no tokens)."""
    if count(["The quick brown fox jumps over the lazy dog."])[0] == 0:
        raise QKAblateError(
            f"{name} encodes text to 0 tokens, so prompt lengths cannot be measured; "
            'pass a tokenizer that ships its vocabulary with --metadata \'{"tokenizer": "<name or path>"}\''
        )


def fit_units(
    render: Callable[[int], str],
    count: Counter,
    target: int,
    guess: int,
    per_unit: float,
    tolerance: int = 0,
    max_steps: int = 64,
) -> tuple[int, str, int]:
    """Largest `n` (or one within `tolerance` tokens of the target) with `count(render(n)) <= target`.

    Returns `(n, text, tokens)`. `guess` and `per_unit` (tokens added per unit) only steer the
    search; every returned length is an exact count. Raises QKAblateError when even `n = 0`
    does not fit.
    """
    best: tuple[int, str, int] | None = None  # largest n known to fit
    over: int | None = None  # smallest n known not to fit
    rate = max(per_unit, 1e-6)
    previous: tuple[int, int] | None = None
    n = max(0, int(guess))
    for step in range(max_steps):
        text = render(n)
        tokens = count([text])[0]
        if previous is not None and previous[0] != n:
            measured = (tokens - previous[1]) / (n - previous[0])
            if measured > 0:
                rate = measured
        previous = (n, tokens)
        if tokens <= target:
            if best is None or n > best[0]:
                best = (n, text, tokens)
            if target - tokens <= tolerance:
                return best
        elif over is None or n < over:
            over = n
        low = best[0] if best is not None else -1
        if over is not None and over - low <= 1:
            break
        if over is not None and step >= 8:  # secant steps stalled: bisect the bracket
            nxt = (max(low, 0) + over) // 2
        else:
            nxt = n + math.floor((target - tokens) / rate)
            if tokens <= target and nxt <= n:
                nxt = n + 1
        if nxt <= low:
            nxt = low + 1
        if over is not None and nxt >= over:
            nxt = over - 1
        if nxt < 0:
            nxt = 0
        if nxt == n:  # no progress possible
            break
        n = nxt
    if best is None:
        raise QKAblateError(
            f"a prompt of {target} tokens is too short for this task's fixed text; choose a longer length"
        )
    return best


def spread_fractions(jitters: Sequence[float]) -> list[float]:
    """One fraction in [0, 1) per document, spread evenly over the interval.

    With `num = len(jitters)` equal cells, document i gets cell `rank_i` plus `jitters[i]` (a
    seeded number in [0, 1)) of a cell, where the ranks follow the golden-ratio sequence: the
    whole set covers every cell exactly once, and any prefix (lm-eval's --limit takes the first
    N documents) is spread over the interval as well.
    """
    num = len(jitters)
    keys = [(i * _GOLDEN) % 1.0 for i in range(num)]
    rank = [0] * num
    for position, index in enumerate(sorted(range(num), key=lambda i: keys[i])):
        rank[index] = position
    return [(rank[i] + min(max(float(jitters[i]), 0.0), 0.999999)) / num for i in range(num)]


MIN_FILL = 0.99  # every exact-length prompt has at least this fraction of its token budget


def doc_rng(task: str, seed: int, length: int, index: int) -> random.Random:
    """The random stream of one document; a string seed is stable across processes (no hash())."""
    return random.Random(f"qk-ablate/{task}/{seed}/{length}/{index}")


def fit_documents(
    tokenizer: Any,
    frame: PromptFrame,
    render: Callable[[int, int], str],
    num_docs: int,
    target: int,
    sample_units: int,
    what: str = "document",
) -> list[tuple[int, str, int]]:
    """`(units, text, tokens)` for each document `i`, `render(i, units)` sized to fit `target`
    tokens of `tokenizer` as sent inside `frame`.

    Calibrates on document 0, tries its unit count for every other document in batches (most
    fit at once, as only needles and numbers differ), and searches again only those that miss
    the tolerance band (0.2% of the target). Every size returned is an exact count; a document
    that cannot reach `MIN_FILL` of the target raises a readable error.
    """
    count = framed_counter(token_counter(tokenizer, probe=render(0, max(1, sample_units // 10))), frame)
    check_tokenizer(count)
    tolerance = max(1, int(target * 0.002))
    fixed, with_sample = count([render(0, 0), render(0, sample_units)])
    per_unit = max((with_sample - fixed) / sample_units, 1e-3)

    def fit(i: int, guess: int) -> tuple[int, str, int]:
        return fit_units(lambda n: render(i, n), count, target, guess, per_unit, tolerance)

    n_ref, _, _ = fit(0, math.floor((target - fixed) / per_unit))
    fitted: list[tuple[int, str, int]] = []
    for start in range(0, num_docs, _BATCH):  # bounded memory at 128k tokens per prompt
        batch = [render(i, n_ref) for i in range(start, min(start + _BATCH, num_docs))]
        for offset, tokens in enumerate(count(batch)):
            if target - tolerance <= tokens <= target:
                fitted.append((n_ref, batch[offset], tokens))
            else:
                fitted.append(fit(start + offset, n_ref + math.floor((target - tokens) / per_unit)))
    for i, (_, _, tokens) in enumerate(fitted):
        if tokens > target or tokens < MIN_FILL * target:
            raise QKAblateError(
                f"could not size {what} {i} to {target} tokens (got {tokens}); "
                "the tokenizer spends too many tokens per filler unit for this length"
            )
    return fitted
