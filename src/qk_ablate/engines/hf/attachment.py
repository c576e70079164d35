"""Attach an intervention to a loaded model, and detach it leaving the model exactly as it was.

Pre-RoPE (`rope=pre`): forward hooks on the Q/K/V sources found by `arch.find_layout`
(`pre_rope`). Post-RoPE (`rope=post`): a wrapper in transformers' `AttentionInterface` that
edits query/key/value before the user's own kernel (`post_rope`). What is done to a tensor is
`edits.Editor`'s business.

A forward pre-hook on the whole model decides, once per forward, which positions are prompt
positions (`prompt: [B, S]`, False for padding and for tokens that are not prompt) and whether
the forward is a prefill (empty cache) or a decode step. The KV cache is recognised by its type
(a `transformers.cache_utils.Cache` among the forward's arguments), whatever its keyword is.
A no-op spec with no observer installs nothing, so it runs on any model at all. A decode step
that the intervention leaves alone (`stage=prefill`, K/V not rebuilt from a latent) runs without
the projection hooks, which come back at the next prefill, and the attention wrapper only checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from qk_ablate.core.edits import Editor, Observer
from qk_ablate.core.record import SelectionTally
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import IDLE_DECODE, Step
from qk_ablate.core.vocabulary import TensorName, Where
from qk_ablate.engines.hf import post_rope, pre_rope
from qk_ablate.engines.hf.arch import ModelLayout, find_layout
from qk_ablate.engines.hf.forward import Forward
from qk_ablate.errors import QKAblateError

__all__ = ["Attachment", "Observer", "attach"]

_PLACES: tuple[Where, ...] = ("pre", "post")  # where an observer can watch (`observe`)


class Attachment:
    """An intervention (and optional observers) attached to one model; use as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        spec: InterventionSpec,
        observer: Observer | None = None,
        observe: tuple[str, ...] = (),
        after: bool = False,
    ) -> None:
        """`observer` sees each prefill tensor of `observe` ('pre', 'post') before the intervention
        changes it, or as the intervention left it with `after=True`."""
        self.model = model
        self.spec = spec = spec.for_model(model)
        acts = spec.edits_attention
        observed = frozenset(w for w in _PLACES if w in observe) if observer is not None else frozenset()
        self._pre = (acts and spec.rope == "pre") or "pre" in observed
        self._post = (acts and spec.rope == "post") or "post" in observed
        self.layout: ModelLayout | None = find_layout(model) if (self._pre or self._post) else None
        layers = spec.layer_indices(self.layout.num_layers) if self.layout is not None else frozenset()
        band = band_dims(model, spec) if acts and spec.select == "band" else None
        self.editor = Editor(spec, layers, observer, observed, band=band, after=after)
        self.forward = Forward(self.editor)
        if self.layout is not None:
            self._check(self.layout)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pre_handles: list[torch.utils.hooks.RemovableHandle] = []
        sites = self.layout.sites if self.layout is not None else ()
        self._decode_work = self.editor.works_on_decode or any(
            site.recomputed or any(source.recomputed for source in site.sources.values()) for site in sites
        )
        self._original: str | None = None
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    def _check(self, layout: ModelLayout) -> None:
        if self._post and not layout.has_rope:
            raise QKAblateError(
                f"{layout.model_type} has no rotary embedding, so post-RoPE work is undefined; "
                "use rope=pre (the projection outputs) for this model"
            )
        if self.spec.stage == "all" and self.spec.quant != "none":
            site = layout.sites[0]
            rebuilt = (
                {n for n, s in site.sources.items() if s.recomputed}
                if self.spec.rope == "pre"
                else ({"k", "v"} if site.recomputed else set())
            )
            if rebuilt & self.spec.quant_target_set():
                raise QKAblateError(
                    f"stage=all with quantization is not supported for {layout.model_type}'s "
                    f"{'/'.join(sorted(rebuilt)).upper()}, which are rebuilt from a latent cache every step; "
                    "use stage=prefill"
                )

    # ----------------------------------------------------------------- lifecycle
    def attach(self) -> Attachment:
        """Install hooks (idempotent)."""
        if self._handles or self.layout is None:
            return self  # a no-op spec with no observer changes nothing, so install nothing
        if self._post:  # first, so that a refusal leaves nothing installed
            self._original = post_rope.install(self.model, self.layout, self.forward)
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        self._hook_projections()
        return self

    def _hook_projections(self) -> None:
        """Pre-RoPE hooks on (again, after decode steps that did without them)."""
        if self._pre and not self._pre_handles:
            assert self.layout is not None  # `_pre` work found the layout in __init__
            self._pre_handles = pre_rope.install(self.layout, self.forward)

    def _unhook_projections(self) -> None:
        for handle in self._pre_handles:
            handle.remove()
        self._pre_handles = []

    def remove(self) -> None:
        """Remove every hook and restore the attention implementation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._unhook_projections()
        if self._original is not None:
            assert self.layout is not None  # `attach` installed the wrapper with it
            post_rope.restore(self.model, self.layout, self._original)
            self._original = None
        self.editor.clear()

    def tally(self) -> SelectionTally:
        """What the selection has chosen so far (the run record's `qk_ablate_selected`)."""
        return self.editor.tally()

    def __enter__(self) -> Attachment:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextlib.contextmanager
    def positions(self, prompt: torch.Tensor, tokens: torch.Tensor | None = None) -> Iterator[None]:
        """Within this block, forwards take `prompt: [B, S]` as the prompt and `tokens` as non-padding.

        For cache-free forwards that also hold tokens that are not prompt: a loglikelihood
        request's continuation, or a recomputation of generated tokens. `tokens` defaults to all.
        """
        self._fixed = (prompt.bool(), torch.ones_like(prompt, dtype=torch.bool) if tokens is None else tokens.bool())
        try:
            yield
        finally:
            self._fixed = None

    # ----------------------------------------------------------------- per forward
    def _on_model_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        from transformers.cache_utils import Cache

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        assert ids is not None, "a model forward without input_ids or inputs_embeds"
        q_len = ids.shape[1]
        cache = next((v for v in (*args, *kwargs.values()) if isinstance(v, Cache)), None)
        past = cache.get_seq_length() if cache is not None else 0
        if past and not self._decode_work:  # a decode step the intervention leaves alone: no masks, no hooks
            self._unhook_projections()
            self.forward.step = IDLE_DECODE
            return
        self._hook_projections()
        prompt: torch.Tensor | None
        tokens: torch.Tensor | None
        if self._fixed is not None:
            prompt, tokens = (m[:, -q_len:] for m in self._fixed)
        else:
            mask = kwargs.get("attention_mask")
            prompt = mask[:, -q_len:].bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
            tokens = prompt
        if self.spec.stage == "all" and past and "Static" in type(cache).__name__:
            raise QKAblateError("stage=all works with the dynamic KV cache only; drop cache_implementation=static")
        self.forward.step = Step(prompt=prompt, tokens=tokens, prefill=past == 0)
        if past == 0:
            self.editor.new_batch()


def band_dims(model: nn.Module, spec: InterventionSpec) -> dict[TensorName, torch.Tensor]:
    """Per destroyed tensor, the `[D]` dims of `spec`'s band (`band=` or `pairs=`) where `spec.rope` edits it."""
    from qk_ablate.engines.hf.rope import model_rope_dims

    pairs = spec.pair_indices()
    chosen: dict[TensorName, torch.Tensor] = {}
    for name in sorted(spec.ablate_targets()):
        rope = model_rope_dims(model, where=spec.rope, name=name)
        if pairs is not None:
            top = max(rope.pair)
            if max(pairs) > top:
                raise QKAblateError(f"pairs={spec.pairs}: this model's {name} has rotary pairs 0-{top}")
            mask = [p in pairs for p in rope.pair]
        else:
            mask = [b == spec.band for b in rope.band]
        if not any(mask):
            raise QKAblateError(
                f"band={spec.band}: no dim of this model's {name} is in that band "
                f"(bands by wavelength: high < 64 tokens, low > the {rope.context}-token window); "
                "choose another band or pairs="
            )
        chosen[name] = torch.tensor(mask, dtype=torch.bool)
    return chosen


def attach(model: nn.Module, spec: InterventionSpec, **kwargs) -> Attachment:
    """Attach `spec` to `model` now; call `.remove()` (or use `with`) to detach."""
    return Attachment(model, spec, **kwargs).attach()
