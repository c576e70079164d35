"""The vLLM engine's attachment point: hooks inside vLLM's model, in the process that holds it.

vLLM flattens a step's sequences into one `[tokens, heads * head_dim]` tensor. Per step, the
sequences that start from an empty cache (their query length equals their sequence length, in
the attention metadata's `query_start_loc` / `seq_lens`) are gathered into the `[B, H, S, D]`
layout the HF engine uses, edited by the same `edits.Editor`, and scattered back; decode rows of
the same step are left alone (`stage=prefill`). Post-RoPE the hook is a forward pre-hook on each
layer's `attn` module (it receives post-RoPE q, k, v and writes k, v into the paged cache
itself, so the destroyed prompt keys stay destroyed for every decode step); pre-RoPE it is a
forward hook on the fused `qkv_proj`. Statistics and masks are computed per sequence from its
own tokens, so a prompt's result never depends on its batch mates.

The functions `attach`, `detach` and `set_prompt_lengths` are what the lm-eval model sends to
vLLM's worker (`LLM.apply_model`): module-level, so they can travel to another process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qk_ablate.edits import Editor, Step
from qk_ablate.errors import QKAblateError
from qk_ablate.spec import InterventionSpec

_ATTRIBUTE = "_qk_ablate_attachment"


@dataclass(frozen=True)
class VllmSite:
    """One layer of a vLLM model: its attention module, fused projection and local head counts."""

    layer: int
    attn: nn.Module
    qkv_proj: nn.Module | None
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Packing:
    """Where the step's fresh sequences sit in the flat token dimension, as `[B, S]` grids."""

    index: torch.Tensor  # [B, S] flat token index (clamped where not valid)
    valid: torch.Tensor  # [B, S] real tokens of the sequence
    prompt: torch.Tensor  # [B, S] prompt tokens (all real ones, or a loglikelihood's context)

    def gather(self, flat: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        """`flat: [T, heads * head_dim]` -> `[B, heads, S, head_dim]`."""
        return flat[self.index].unflatten(-1, (heads, head_dim)).transpose(1, 2)

    def scatter(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A copy of `flat` with the packed sequences' tokens replaced by `x: [B, H, S, D]`."""
        out = flat.clone()
        out[self.index[self.valid]] = x.transpose(1, 2).flatten(-2)[self.valid].to(flat.dtype)
        return out


def find_sites(model: nn.Module) -> list[VllmSite]:
    """Every decoder layer's attention, found from the modules (vLLM's `Attention` has `layer_name`)."""
    sites = []
    for _, module in model.named_modules():
        attn = getattr(module, "attn", None)
        name = getattr(attn, "layer_name", None)
        if attn is None or name is None or not hasattr(attn, "num_kv_heads"):
            continue
        found = re.search(r"layers\.(\d+)\.", name)
        layer = int(found.group(1)) if found else len(sites)
        sites.append(VllmSite(layer, attn, getattr(module, "qkv_proj", None), int(attn.num_heads),
                              int(attn.num_kv_heads), int(attn.head_size)))
    if not sites:
        raise QKAblateError(f"found no vLLM attention layers in {type(model).__name__}; qk_ablated_vllm cannot reach it")
    return sorted(sites, key=lambda s: s.layer)


class VllmAttachment:
    """An intervention installed in one vLLM worker's model; `remove` leaves the model as it was."""

    def __init__(self, model: nn.Module, spec: InterventionSpec) -> None:
        self.model = model
        self.spec = spec
        self.sites = find_sites(model)
        self.editor = Editor(spec, spec.layer_indices(len(self.sites)))
        self.prompt_lengths: dict[tuple[int, ...], int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._metadata: object = None
        self._packing: Packing | None = None
        self._input_ids: torch.Tensor | None = None

    def install(self) -> None:
        if self.spec.is_noop:
            return
        embed = next((m for n, m in self.model.named_modules() if n.endswith("embed_tokens")), None)
        if embed is not None:
            self._handles.append(embed.register_forward_pre_hook(self._remember_ids))
        for site in self.sites:
            if self.spec.rope == "post":
                self._handles.append(site.attn.register_forward_pre_hook(self._post_hook(site)))
            elif site.qkv_proj is None:
                raise QKAblateError(f"layer {site.layer} has no fused qkv_proj, so rope=pre cannot reach it on vLLM")
            else:
                self._handles.append(site.qkv_proj.register_forward_hook(self._pre_hook(site)))

    def set_prompt_lengths(self, lengths: dict[tuple[int, ...], int] | None) -> None:
        """Loglikelihood inputs' context lengths, by their tokens; the next step is packed anew."""
        self.prompt_lengths = lengths
        self._metadata = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.editor.clear()

    # ------------------------------------------------------------ per step
    def _remember_ids(self, module: nn.Module, args: tuple) -> None:
        self._input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else None

    def _packing_now(self, site: VllmSite) -> Packing | None:
        """The step's fresh sequences, worked out once per step (at its first layer)."""
        from vllm.forward_context import get_forward_context

        step = get_forward_context().attn_metadata  # a new object every step
        if step is not self._metadata:
            self._metadata = step
            metadata = step.get(site.attn.layer_name) if isinstance(step, dict) else step
            self._packing = None if metadata is None else self._pack(metadata)  # None: a warm-up run
            if self._packing is not None:
                self.editor.begin(Step(prompt=self._packing.prompt, tokens=self._packing.valid, prefill=True))
        return self._packing

    def _pack(self, metadata: Any) -> Packing | None:
        starts = metadata.query_start_loc
        count = int(metadata.num_actual_tokens)
        query = starts[1:] - starts[:-1]
        fresh = (query == metadata.seq_lens) & (query > 0)
        rows = fresh.nonzero().flatten()
        if rows.numel() == 0:
            return None
        lengths = query[rows]
        width = int(lengths.max())
        offsets = torch.arange(width, device=starts.device)
        valid = offsets[None, :] < lengths[:, None]
        index = (starts[rows][:, None] + offsets[None, :]).clamp(max=count - 1)
        prompt = valid
        if self.prompt_lengths is not None:
            prompt = valid & (offsets[None, :] < self._context_lengths(rows, starts, lengths)[:, None])
        return Packing(index, valid, prompt)

    def _context_lengths(self, rows: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A loglikelihood request's context length, found by its tokens (the rest is its continuation)."""
        if self._input_ids is None:
            raise QKAblateError("qk_ablated_vllm could not see the step's input ids, so it cannot tell context from continuation")
        ids = self._input_ids.tolist()
        found = []
        for start, length in zip(starts[rows].tolist(), lengths.tolist()):
            tokens = tuple(ids[start : start + length])
            found.append(self.prompt_lengths.get(tokens, length))  # not one of ours: all of it is prompt
        return torch.tensor(found, device=rows.device)

    # ------------------------------------------------------------ hooks
    def _edit(self, site: VllmSite, name: str, where: str, flat: torch.Tensor, heads: int) -> torch.Tensor:
        if not self.editor.changes(site.layer, name, where):  # no gather for a tensor left alone
            return flat
        packing = self._packing_now(site)
        if packing is None:
            return flat
        new = self.editor.edit(site.layer, name, where, packing.gather(flat, heads, site.head_dim))
        return flat if new is None else packing.scatter(flat, new)

    def _post_hook(self, site: VllmSite):
        def hook(module: nn.Module, args: tuple) -> tuple:
            query, key, value, *rest = args
            query = self._edit(site, "q", "post", query, site.num_heads)
            key = self._edit(site, "k", "post", key, site.num_kv_heads)
            value = self._edit(site, "v", "post", value, site.num_kv_heads)
            return (query, key, value, *rest)

        return hook

    def _pre_hook(self, site: VllmSite):
        q_width, kv_width = site.num_heads * site.head_dim, site.num_kv_heads * site.head_dim

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            out, *rest = output if isinstance(output, tuple) else (output,)
            parts = out.split([q_width, kv_width, kv_width], dim=-1)
            heads = (site.num_heads, site.num_kv_heads, site.num_kv_heads)
            edited = [self._edit(site, name, "pre", part, h) for name, part, h in zip("qkv", parts, heads)]
            if all(new is old for new, old in zip(edited, parts)):
                return None
            new = torch.cat(edited, dim=-1)
            return (new, *rest) if isinstance(output, tuple) else new

        return hook


# ---------------------------------------------------------------- sent to the worker


def attach(model: nn.Module, spec: dict[str, Any]) -> int:
    """Install `spec` on this worker's model (replacing any earlier one); returns its layer count."""
    detach(model)
    attachment = VllmAttachment(model, InterventionSpec.from_args(spec))
    attachment.install()
    setattr(model, _ATTRIBUTE, attachment)
    return len(attachment.sites)


def detach(model: nn.Module) -> None:
    """Remove this worker's attachment, if any."""
    attachment = getattr(model, _ATTRIBUTE, None)
    if attachment is not None:
        attachment.remove()
        delattr(model, _ATTRIBUTE)


def set_prompt_lengths(model: nn.Module, lengths: dict[tuple[int, ...], int] | None) -> None:
    """Loglikelihood requests: each input's context length, by its tokens (None: every token is prompt)."""
    attachment = getattr(model, _ATTRIBUTE, None)
    if attachment is not None:
        attachment.set_prompt_lengths(lengths)
