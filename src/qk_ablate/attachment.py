"""Attach an intervention to a loaded model, and detach it leaving the model exactly as it was.

Pre-RoPE (`rope=pre`): forward hooks on the Q/K/V sources found by `arch.find_layout`.
Post-RoPE (`rope=post`): a wrapper registered in transformers' `AttentionInterface` under
`qk_ablate:<original>`; it edits query/key/value, then calls the user's own kernel (SDPA,
flash, eager), so no S x S tensor is ever built. Keys (and values) are edited in place, because
transformers hands the attention function the tensor it has just written into the KV cache:
the destroyed prompt keys therefore stay destroyed for every decode step.

A forward pre-hook on the whole model decides, once per forward, which positions are prompt
positions (`prompt: [B, S]`, False for padding and for tokens that are not prompt) and whether
the forward is a prefill (empty cache) or a decode step.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from qk_ablate.arch import AttentionSite, ModelLayout, TensorSource, find_layout
from qk_ablate.destroy import destroy_columns, fill_values
from qk_ablate.errors import QKAblateError
from qk_ablate.quantize import fake_quantize
from qk_ablate.selection import (
    column_norms,
    control_mask,
    massive_mask_threshold,
    massive_mask_topk,
    random_scores,
)
from qk_ablate.spec import InterventionSpec

# An observer sees every prefill tensor before it is changed: (layer, tensor name, 'pre'|'post', x [B,H,S,D], prompt mask).
Observer = Callable[[int, str, str, torch.Tensor, "torch.Tensor | None"], None]

_PREFIX = "qk_ablate:"
# attention module -> (attachment, site): read by the registered attention wrapper.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, tuple[Attachment, AttentionSite]] = weakref.WeakKeyDictionary()


@dataclass
class _Step:
    """What the current forward is.

    prompt: [B, S] positions whose statistics select and fill (None: all positions);
    tokens: [B, S] non-padding positions, edited by `stage=all` (None: all positions);
    prefill: the cache was empty, so every position of this forward is new.
    """

    prompt: torch.Tensor | None
    tokens: torch.Tensor | None
    prefill: bool


@dataclass
class _Kept:
    """A prefill's per-sample decisions, re-used on decode steps when `stage=all`."""

    columns: torch.Tensor | None
    fill: torch.Tensor | None
    protect: torch.Tensor | None


class Attachment:
    """An intervention (and optional observers) attached to one model; use as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        spec: InterventionSpec,
        observer: Observer | None = None,
        observe: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.spec = spec
        self.layout: ModelLayout = find_layout(model)
        self.layers = spec.layer_indices(self.layout.num_layers)
        self._destroyed, self._quantized = spec.ablate_targets(), spec.quant_target_set()
        self.observer = observer
        self.observe = frozenset(observe)
        acts = not spec.is_noop
        self._pre = (acts and spec.rope == "pre") or "pre" in self.observe
        self._post = (acts and spec.rope == "post") or "post" in self.observe
        if self._post and not self.layout.has_rope:
            raise QKAblateError(
                f"{self.layout.model_type} has no rotary embedding, so post-RoPE work is undefined; "
                "use rope=pre (the projection outputs) for this model"
            )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._configs: list[tuple[object, str]] = []
        self._step = _Step(prompt=None, tokens=None, prefill=True)
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kept: dict[tuple[int, str], _Kept] = {}
        self._scores: dict[tuple[int, str], torch.Tensor] = {}

    # ----------------------------------------------------------------- lifecycle
    def attach(self) -> Attachment:
        """Install hooks (idempotent)."""
        if self._handles or self._configs:
            return self
        if not (self._pre or self._post):
            return self  # a no-op spec with no observer changes nothing, so install nothing
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        if self._pre:
            self._attach_pre()
        if self._post:
            self._attach_post()
        return self

    def remove(self) -> None:
        """Remove every hook and restore the attention implementation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for config, original in self._configs:
            config._attn_implementation = original
        self._configs.clear()
        for site in self.layout.sites:
            _ACTIVE.pop(site.module, None)
        self._kept.clear()

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
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        q_len = ids.shape[1]
        # transformers renamed the argument (past_key_values -> cache); a missed cache would make
        # every decode step look like a fresh prompt
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if self._fixed is not None:
            prompt, tokens = (m[:, -q_len:] for m in self._fixed)
        else:
            mask = kwargs.get("attention_mask")
            prompt = mask[:, -q_len:].bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
            tokens = prompt
        if self.spec.stage == "all" and past and "Static" in type(cache).__name__:
            raise QKAblateError("stage=all works with the dynamic KV cache only; drop cache_implementation=static")
        self._step = _Step(prompt=prompt, tokens=tokens, prefill=past == 0)
        if self._step.prefill:
            self._kept.clear()

    def _edit(self, layer: int, name: str, where: str, x: torch.Tensor) -> torch.Tensor | None:
        """The intervention on one tensor in attention layout [B, H, S_new, D]; None = unchanged."""
        step, spec = self._step, self.spec
        if step.prefill and self.observer is not None and where in self.observe:
            self.observer(layer, name, where, x, step.prompt)
        if spec.is_noop or where != spec.rope or layer not in self.layers:
            return None
        destroy = name in self._destroyed
        quantize = name in self._quantized
        if not (destroy or quantize):
            return None
        if step.prefill:
            return self._edit_prompt(layer, name, x, destroy, quantize)
        if spec.stage == "all":
            return self._edit_new_tokens(layer, name, x, destroy, quantize)
        return None

    def _edit_prompt(self, layer: int, name: str, x: torch.Tensor, destroy: bool, quantize: bool) -> torch.Tensor:
        """Select and fill from the prompt; edit the prompt (`stage=prefill`) or every real token (`all`)."""
        spec, prompt = self.spec, self._step.prompt
        edited = prompt if spec.stage == "prefill" else self._step.tokens
        massive = self._massive(x, prompt)
        columns = fill = None
        if destroy:
            columns = massive if spec.ablate == "massive" else control_mask(massive, self._control_scores(layer, name, x))
            fill = fill_values(x, prompt, spec.fill)
            x = destroy_columns(x, columns, edited, fill)
        protect = massive if spec.protect == "massive" else None
        if quantize:
            x = fake_quantize(x, spec.quant, spec.quant_axis, spec.group or None, spec.sym, edited, protect)
        if spec.stage == "all":
            self._kept[(layer, name)] = _Kept(columns, fill, protect)
        return x

    def _edit_new_tokens(self, layer: int, name: str, x: torch.Tensor, destroy: bool, quantize: bool) -> torch.Tensor:
        kept = self._kept.get((layer, name))
        if kept is None:
            raise QKAblateError("stage=all saw a decode step without its prefill; start generation from an empty cache")
        spec = self.spec
        if destroy:
            x = destroy_columns(x, kept.columns, None, kept.fill)
        if quantize:
            x = fake_quantize(x, spec.quant, spec.quant_axis, spec.group or None, spec.sym, None, kept.protect)
        return x

    def _massive(self, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor | None:
        if not self.spec.needs_selection:
            return None
        norms = column_norms(x, prompt)
        if self.spec.select == "topk":
            return massive_mask_topk(norms, self.spec.topk)
        return massive_mask_threshold(norms, self.spec.lam)

    def _control_scores(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.spec.control == "smallest":
            return column_norms(x, self._step.prompt)
        key = (layer, name)
        if key not in self._scores:
            salt = layer * 3 + "qkv".index(name)
            self._scores[key] = random_scores(x.shape[1], x.shape[3], self.spec.seed, salt, x.device)
        return self._scores[key]

    # ----------------------------------------------------------------- pre-RoPE
    def _attach_pre(self) -> None:
        by_module: dict[nn.Module, list[tuple[int, str, TensorSource]]] = {}
        for site in self.layout.sites:
            for name, source in site.sources.items():
                by_module.setdefault(source.module, []).append((site.layer, name, source))
        for module, entries in by_module.items():
            self._handles.append(module.register_forward_hook(self._pre_hook(entries)))

    def _pre_hook(self, entries: list[tuple[int, str, TensorSource]]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if output.ndim == 4:  # a per-head q_norm/k_norm: one source, [B, S, H, D] or [B, H, S, D]
                (layer, name, _), = entries
                heads_first = _heads_first(args[0], output, entries[0][2].num_heads)
                x = output if heads_first else output.transpose(1, 2)
                new = self._edit(layer, name, "pre", x)
                if new is None:
                    return None
                return new if heads_first else new.transpose(1, 2)
            edited: list[tuple[TensorSource, torch.Tensor]] = []
            for layer, name, source in entries:  # [B, S, width], maybe a fused q|k|v projection
                part = output[..., source.start : source.stop]
                x = part.unflatten(-1, (source.num_heads, source.head_dim)).transpose(1, 2)
                new = self._edit(layer, name, "pre", x)
                if new is not None:
                    edited.append((source, new))
            if not edited:
                return None
            result = output.clone()
            for source, new in edited:
                result[..., source.start : source.stop] = new.transpose(1, 2).flatten(-2)
            return result

        return hook

    # ----------------------------------------------------------------- post-RoPE
    def _attach_post(self) -> None:
        configs = {id(c): c for c in _configs_of(self.model)}
        for config in configs.values():
            original = config._attn_implementation or "eager"
            if original.startswith(_PREFIX):
                raise QKAblateError("this model already has a qk-ablate attachment; remove it before attaching another")
            _register_wrapper(original)
            self._configs.append((config, original))
            config._attn_implementation = _PREFIX + original
        for site in self.layout.sites:
            _ACTIVE[site.module] = (self, site)

    def _post_edit(self, site: AttentionSite, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Edit query (returned) and the new positions of key/value in place (they are the cache's tensors)."""
        q_len = query.shape[2]
        new_query = self._edit(site.layer, "q", "post", query)
        for name, tensor in (("k", key), ("v", value)):
            span = tensor[:, :, :q_len] if self._step.prefill else tensor[:, :, -q_len:]
            new = self._edit(site.layer, name, "post", span)
            if new is not None:
                span.copy_(new)
        return query if new_query is None else new_query


def _heads_first(norm_input: torch.Tensor, output: torch.Tensor, num_heads: int) -> bool:
    """Whether a per-head norm runs on [B, H, S, D] (Gemma3) rather than [B, S, H, D] (Qwen3).

    Decided by shape, or, when S == H, by the input's strides: a transposed view of the
    projection has its head stride smaller than its sequence stride.
    """
    if output.shape[1] == num_heads and output.shape[2] != num_heads:
        return True
    if output.shape[2] == num_heads and output.shape[1] != num_heads:
        return False
    return norm_input.stride(1) < norm_input.stride(2)


def _configs_of(model: nn.Module) -> list:
    """Every config object the model's modules read `_attn_implementation` from."""
    found = [model.config] if hasattr(model, "config") else []
    found += [getattr(model.config, name) for name in getattr(model.config, "sub_configs", {}) or {}]
    found += [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    return [c for c in found if c is not None and hasattr(c, "_attn_implementation")]


def _register_wrapper(original: str) -> None:
    """Register `qk_ablate:<original>` for attention and for mask creation (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _PREFIX + original
    if name in ALL_ATTENTION_FUNCTIONS:
        return

    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        entry = _ACTIVE.get(module)
        if entry is not None:
            attachment, site = entry
            query = attachment._post_edit(site, query, key, value)
        if original in ALL_ATTENTION_FUNCTIONS:
            kernel = ALL_ATTENTION_FUNCTIONS[original]
        else:  # "eager": each modeling file has its own eager function (softcapping etc.)
            kernel = sys.modules[type(module).__module__].eager_attention_forward
        return kernel(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    if original in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])


def attach(model: nn.Module, spec: InterventionSpec, **kwargs) -> Attachment:
    """Attach `spec` to `model` now; call `.remove()` (or use `with`) to detach."""
    return Attachment(model, spec, **kwargs).attach()
