"""The lm-eval model `qk_ablated`: HFLM with an intervention attached inside attention.

Every HFLM argument keeps working; our keys (docs/model-arguments.md) are taken out of model_args
first, validated into an `InterventionSpec`, attached once after loading, and recorded in the
results JSON under `config.qk_ablate`.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any

import lm_eval.models  # noqa: F401  (fill lm-eval's registry first, or `--model hf` stops resolving)
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from qk_ablate.core.record import run_record
from qk_ablate.core.spec import InterventionSpec, split_model_args
from qk_ablate.engines.hf import kv_cache
from qk_ablate.engines.hf.attachment import Attachment
from qk_ablate.errors import QKAblateError
from qk_ablate.models.embedded import resolve_pretrained
from qk_ablate.models.loading import is_load_failure, load_error
from qk_ablate.task_data.settings import evaluating


def _engine_keys() -> set[str]:
    """What HFLM and `from_pretrained` take by name (`torch_dtype`: transformers' older `dtype`), so a
    typo of one of our keys is told apart from them."""
    from transformers import PreTrainedModel

    named = {
        *inspect.signature(HFLM.__init__).parameters,
        *inspect.signature(PreTrainedModel.from_pretrained).parameters,
    }
    return named | {"torch_dtype"}


@register_model("qk_ablated")
class QKAblatedLM(HFLM):
    """HFLM whose attention destroys or quantizes Q/K/V dims as its `InterventionSpec` says."""

    def __init__(self, pretrained: Any = "smollm2-135m", gguf_file: str | None = None, **kwargs: Any) -> None:
        ours, rest = split_model_args(kwargs, _engine_keys())
        self.spec = InterventionSpec.from_args(ours)
        if isinstance(pretrained, str):
            self._requested_model = pretrained
            pretrained, gguf_file = resolve_pretrained(pretrained, gguf_file)
        else:
            self._requested_model = type(pretrained).__name__
        try:
            super().__init__(pretrained=pretrained, gguf_file=gguf_file, **rest)
        except Exception as error:  # missing or broken files, a missing quantization package, an unknown Hub id
            path = pretrained if isinstance(pretrained, str) else None
            if not is_load_failure(error, path, gguf_file):
                raise
            raise load_error(self._requested_model, error, path, gguf_file) from error
        kv_cache.check_model(self.model, self.spec)
        self.attachment = Attachment(self.model, self.spec).attach()
        self.spec = self.attachment.spec  # its preset resolved for this model
        evaluating(self.tokenizer)  # tasks built after us size their prompts in our tokens
        self._requests: dict[tuple[int, ...], tuple[int, int]] | None = None
        self._warned_kv_cache = False
        accepted = inspect.signature(self.model.forward).parameters
        self._lean_forward = {"logits_to_keep", "use_cache"} <= set(accepted)

    def use(self, spec: InterventionSpec) -> None:
        """Swap the intervention without reloading the model (the demo and sweeps run several)."""
        kv_cache.check_model(self.model, spec)
        self.attachment.remove()
        self.attachment = Attachment(self.model, spec).attach()
        self.spec = self.attachment.spec
        self._warned_kv_cache = False

    # ------------------------------------------------------------ generation
    def _model_generate(self, context, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        """HFLM's generation, with transformers' quantized KV cache when `kv_cache` asks for it."""
        return super()._model_generate(context, max_length, stop, **{**kwargs, **kv_cache.generate_kwargs(self.spec)})

    # ------------------------------------------------------------ window
    def generate_until(self, requests, disable_tqdm: bool = False):
        self._check_window(requests)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _check_window(self, requests, per_task: int = 4) -> None:
        """Refuse prompts that HFLM would silently cut from the left (cutting the needle away too).

        Checks the `per_task` longest contexts (by characters) of each task: the length tasks'
        prompts all have nearly the same token count, so the longest ones decide.
        """
        by_task: dict[str, list] = {}
        for request in requests:
            by_task.setdefault(str(request.task_name), []).append(request)
        for task, group in by_task.items():
            for request in sorted(group, key=lambda r: len(r.args[0]), reverse=True)[:per_task]:
                context, gen_kwargs = request.args
                budget = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks) if gen_kwargs else self.max_gen_toks)
                tokens = len(self.tok_encode(context))
                if tokens + budget > self.max_length:
                    raise QKAblateError(
                        f"task {task}: a prompt of {tokens} tokens plus {budget} to generate exceeds the model's "
                        f"window of {self.max_length} tokens; run a shorter length of the task, or a model with "
                        "a longer context (or set max_length, if the model supports more)"
                    )

    # ------------------------------------------------------------ loglikelihood prompts
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """Remember each request's context and continuation lengths, by its input tokens.

        HFLM feeds context + continuation in one forward; the continuation plays the part of
        generated tokens, which `stage=prefill` must leave untouched, and only its positions are
        scored, so only their logits are computed (`_model_call`).
        """
        if self.spec.kv_cache != "none" and not self._warned_kv_cache:
            self._warned_kv_cache = True
            print(
                f"qk-ablate: warning: kv_cache={self.spec.kv_cache} acts in generation only; loglikelihood requests are "
                "scored in one forward without a KV cache, so they run as without it",
                file=sys.stderr,
            )
        window = self.max_length + 1
        found: dict[tuple[int, ...], tuple[int, int]] = {}
        for _, context, continuation in requests:
            inp = tuple((context + continuation)[-window:][:-1])
            scored = max(len(continuation), found.get(inp, (0, 0))[1])
            found[inp] = (max(1, len(inp) - (len(continuation) - 1)), scored)
        self._requests = found
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._requests = None

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """HFLM's forward, with logits for the scored positions only (the last `keep` of the batch).

        HFLM slices each row's continuation counting from the end of what it gets back, so fewer
        positions at the front change nothing it reads; a 128k-token request then costs a prefill,
        not a `[128k, vocab]` block of logits and its log-softmax, nor a KV cache nobody reads.
        """
        if self._requests is None or attn_mask is not None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        prompt, tokens, keep = _positions(inps, self._requests)
        edits = self.attachment.positions(prompt, tokens) if self.spec.edits_attention else contextlib.nullcontext()
        extra = {"logits_to_keep": keep, "use_cache": False} if keep and self._lean_forward else {}
        precision = self.mixed_precision_dtype
        with edits, torch.no_grad(), torch.autocast(self.device.type, dtype=precision, enabled=precision is not None):
            return self.model(inps, **extra).logits

    # ------------------------------------------------------------ reporting
    def get_model_info(self) -> dict:
        """HFLM's info plus the validated intervention spec, so results say what produced them."""
        return {
            **super().get_model_info(),
            **run_record(self._requested_model, "hf", self.spec, self.attachment.tally()),
        }


def _positions(
    inps: torch.Tensor, requests: dict[tuple[int, ...], tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per row of a right-padded batch: prompt (context) positions and real-token positions, and how
    many positions from the end hold every row's scored continuation (0: all, when a row is unknown).

    HFLM pads with token 0, so a row is matched to its request by trying it with trailing
    zeros stripped one at a time (a real input may itself end in token 0).
    """
    rows = inps.tolist()
    width = inps.shape[1]
    prompt_len, token_len, keep = [], [], 0
    for row in rows:
        length = width
        while length > 0 and tuple(row[:length]) not in requests:
            if row[length - 1] != 0:
                length = 0
                break
            length -= 1
        if length == 0:  # not one of our requests (e.g. batch-size probing): treat all as prompt, keep all
            length = width
            prompt_len.append(width)
            keep = width
        else:
            context, scored = requests[tuple(row[:length])]
            prompt_len.append(context)
            keep = max(keep, width - length + scored)
        token_len.append(length)
    arange = torch.arange(width, device=inps.device)
    prompt = arange[None, :] < torch.tensor(prompt_len, device=inps.device)[:, None]
    tokens = arange[None, :] < torch.tensor(token_len, device=inps.device)[:, None]
    return prompt, tokens, 0 if keep >= width else keep
