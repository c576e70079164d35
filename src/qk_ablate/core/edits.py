"""What an intervention does to one Q/K/V tensor in attention layout `[B, H, S, D]`.

An engine hands `Editor.edit` each tensor with its `TensorSite` and the `Step` it belongs to;
the editor selects from the prompt, fills, quantizes, and keeps the prompt's decisions for later
steps where the spec needs them (`kept.Decisions`). Everything derived from a tensor (masks, fills,
control scores, tallies) is made on that tensor's device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from qk_ablate.core import fused
from qk_ablate.core.destroy import column_means, destroy_columns, fill_from_means, shuffled_prompt
from qk_ablate.core.kept import Decisions, Kept
from qk_ablate.core.quantize import fake_quantize
from qk_ablate.core.record import SelectionTally
from qk_ablate.core.selection import (
    column_norms,
    control_mask,
    massive_mask_threshold,
    massive_mask_topk,
    random_scores,
)
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.core.step import Step, TensorSite
from qk_ablate.core.vocabulary import TensorName, Where

# An observer sees every prefill tensor before it is changed (after it, with `Editor(after=True)`):
# (site, x [B, H, S, D], prompt mask [B, S] or None).
Observer = Callable[[TensorSite, torch.Tensor, "torch.Tensor | None"], None]
Span = tuple[int, int]  # the dims [lo, hi) that selection runs over (MLA's rotary dims)


@dataclass(frozen=True)
class Plan:
    """What one `edit` call does, decided before any tensor work."""

    destroy: bool  # the selected columns are filled
    quantize: bool  # the tensor is fake-quantized
    keep: bool  # the prompt's decisions are kept for later steps
    into: bool  # `x` itself is written (the caller's query or cache span)
    span: Span | None  # dims selection runs over (None: all)


class Editor:
    """Applies one `InterventionSpec` to the tensors of the selected layers, forward by forward."""

    def __init__(
        self,
        spec: InterventionSpec,
        layers: frozenset[int],
        observer: Observer | None = None,
        observe: frozenset[Where] = frozenset(),
        shard: Mapping[TensorName, tuple[int, tuple[int, ...]]] | None = None,
        band: Mapping[TensorName, torch.Tensor] | None = None,
        after: bool = False,
    ) -> None:
        """`shard`: per tensor name, (the model's head count, the heads this process holds), for an
        engine that splits heads over devices: the random control is drawn for all heads and sliced,
        so every split of a model selects what the whole model would.
        `band`: per tensor name, a `[D]` bool of the dims `select=band` may choose (its rotary band).
        `after`: the observer sees each tensor as the intervention left it, not as it came."""
        self.spec = spec
        self.layers = layers
        self.observer = observer
        self.observe = observe
        self.after = after
        self._destroyed, self._quantized = spec.ablate_targets(), spec.quant_target_set()
        self.works_on_decode = spec.stage == "all" and not spec.is_noop  # new tokens are edited too
        self.shard = shard or {}
        self.band = dict(band or {})
        self.decisions = Decisions()
        self._bands_moved: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._selected: dict[tuple[TensorName, torch.device], torch.Tensor] = {}  # per tensor and device
        self._heads: dict[TensorName, int] = {}  # per tensor: (sample, layer, head) triples selected from
        self._scores: dict[tuple[int, str, torch.device], torch.Tensor] = {}
        self._head_index: dict[tuple[TensorName, torch.device], torch.Tensor] = {}  # the model's index of each head

    def changes(self, site: TensorSite) -> bool:
        """Whether `edit` can change this tensor (so a caller may skip building its view)."""
        spec = self.spec
        return (
            not spec.is_noop
            and site.where == spec.rope
            and site.layer in self.layers
            and (site.name in self._destroyed or site.name in self._quantized)
        )

    def edit(
        self,
        site: TensorSite,
        x: torch.Tensor,
        step: Step,
        *,
        span: Span | None = None,
        recomputed: bool = False,
        into: bool = False,
    ) -> torch.Tensor | None:
        """The intervention on `x: [B, H, S, D]` of `site` in `step`; None = unchanged.

        `span`: the dims that selection runs over (MLA's rotary dims; None: all).
        `recomputed`: `x` holds every cached position again at each decode step (MLA's K/V).
        `into`: edit `x` itself (the attention wrapper's query and cache spans) and return it.
        """
        watch = step.prefill and self.observer is not None and site.where in self.observe
        if watch and not self.after:
            self.observer(site, x, step.masks(x.device)[0])  # type: ignore[misc]
        new = None
        if self.changes(site):
            plan = Plan(
                destroy=site.name in self._destroyed,
                quantize=site.name in self._quantized,
                keep=recomputed or self.spec.stage == "all",
                into=into,
                span=span,
            )
            new = self._edit(site, x, step, plan, recomputed)
        if watch and self.after:  # what the intervention left: the edited tensor, or x where it changed nothing
            self.observer(site, x if new is None else new, step.masks(x.device)[0])  # type: ignore[misc]
        return new

    def _edit(self, site: TensorSite, x: torch.Tensor, step: Step, plan: Plan, recomputed: bool) -> torch.Tensor | None:
        if step.prefill:
            return self._edit_prompt(site, x, step, plan)
        if recomputed:
            return self._edit_again(self.decisions.find(step, site[:2]), x, plan)
        if self.spec.stage == "all":
            return self._edit_new_tokens(self.decisions.find(step, site[:2]), x, plan)
        return None

    def new_batch(self) -> None:
        """A prefill of a whole batch (HF): the previous batch's decisions are over."""
        self.decisions.new_batch()

    def clear(self) -> None:
        """Forget the prompts' decisions (on detach: they hold device tensors)."""
        self.decisions.clear()

    def _edit_prompt(self, site: TensorSite, x: torch.Tensor, step: Step, plan: Plan) -> torch.Tensor:
        """Select and fill from the prompt; edit the prompt (`stage=prefill`) or every real token (`all`)."""
        spec = self.spec
        prompt, tokens = step.masks(x.device)
        edited = prompt if spec.stage == "prefill" else tokens
        lo, hi = plan.span or (0, x.shape[-1])
        means = plan.destroy and spec.fill not in ("zero", "shuffle")
        norms, column_mean = self._statistics(x, prompt, means) if spec.needs_selection else (None, None)
        norms = None if norms is None else norms[..., lo:hi]
        massive = self._massive(norms)
        columns = fill = None
        if plan.destroy:
            chosen = self._columns(site, x[..., lo:hi], norms, massive, lo, hi)
            columns = _widen(chosen, lo, x.shape[-1])
            fill = self._shuffled(site, x, prompt) if spec.fill == "shuffle" else None
            fill = fill_from_means(column_mean, spec.fill, x, columns) if fill is None else fill
            x = fused.run(destroy_columns, x, columns, edited, fill, into=plan.into)
        protect = _widen(massive, lo, x.shape[-1]) if spec.protect == "massive" else None
        self._count(site.name, columns if plan.destroy else protect, step)
        if plan.quantize:  # after destroy, x is already a new tensor
            x = self._quantize(x, edited, protect, into=plan.into or plan.destroy)
        if plan.keep:
            self.decisions.keep(step, site[:2], Kept(columns, fill, protect, edited, x.shape[2]))
        return x

    def _columns(
        self,
        site: TensorSite,
        x: torch.Tensor,
        norms: torch.Tensor | None,
        massive: torch.Tensor | None,
        lo: int,
        hi: int,
    ) -> torch.Tensor:
        """The columns to destroy (of `x`, the span selected from): the massive ones, the control, or as many
        as are massive from a band."""
        spec = self.spec
        assert norms is not None and massive is not None  # destroying always selects
        if spec.select == "band":
            allowed = self._band_on(site.name, x.device)[lo:hi]
            if spec.exclude == "massive":
                allowed = allowed & ~massive
            return control_mask(massive, self._random_scores(site, x), allowed)
        if spec.ablate == "massive":
            return massive
        return control_mask(massive, norms if spec.control == "smallest" else self._random_scores(site, x))

    def _band_on(self, name: TensorName, device: torch.device) -> torch.Tensor:
        """The band's `[D]` mask on `device`, copied once per device."""
        key = (name, device)
        if key not in self._bands_moved:
            self._bands_moved[key] = self.band[name].to(device)
        return self._bands_moved[key]

    def _count(self, name: TensorName, columns: torch.Tensor | None, step: Step) -> None:
        """Tally what was selected in the step's counted rows, on the tensor's device (read once, after
        the run: no sync per layer)."""
        if columns is None:
            return
        rows = columns.shape[0]
        if step.counted is not None:
            columns, rows = columns & step.counted.to(columns.device)[:, None, None], step.counted_rows
        key, total = (name, columns.device), columns.sum(dtype=torch.int64)  # a split model's layers tally apart
        self._selected[key] = self._selected[key] + total if key in self._selected else total
        self._heads[name] = self._heads.get(name, 0) + rows * columns.shape[1]

    def tally(self) -> SelectionTally:
        """What the selection chose so far, summed over devices (reads device counters: call after the run)."""
        selected: dict[TensorName, int] = {}
        for (name, _), total in self._selected.items():
            selected[name] = selected.get(name, 0) + int(total)
        return SelectionTally(selected, dict(self._heads))

    def _edit_again(self, kept: Kept, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        """A decode step of a tensor rebuilt from its cache: the prompt's edit again, then the new tokens'."""
        head, rest = x[:, :, : kept.length], x[:, :, kept.length :]
        if plan.destroy:
            head = fused.run(destroy_columns, head, kept.columns, kept.edited, kept.fill)
        if plan.quantize:
            head = self._quantize(head, kept.edited, kept.protect)
        if self.spec.stage == "all":
            rest = self._edit_new_tokens(kept, rest, Plan(plan.destroy, plan.quantize, False, False, plan.span))
        return torch.cat([head, rest], dim=2)

    def _edit_new_tokens(self, kept: Kept, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        """`stage=all`'s decode work, the prompt's decisions applied to the new tokens: one fused pass."""
        spec = self.spec
        return fused.run(
            edit_new_tokens,
            x,
            kept.columns if plan.destroy else None,
            kept.fill,
            spec.quant if plan.quantize else "none",
            spec.quant_axis,
            spec.group or None,
            spec.sym,
            kept.protect,
            into=plan.into,
        )

    def _quantize(
        self, x: torch.Tensor, valid: torch.Tensor | None, protect: torch.Tensor | None, into: bool = False
    ) -> torch.Tensor:
        spec = self.spec
        return fused.run(
            fake_quantize, x, spec.quant, spec.quant_axis, spec.group or None, spec.sym, valid, protect, into=into
        )

    def _statistics(
        self, x: torch.Tensor, prompt: torch.Tensor | None, means: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.spec.norm_dtype == "native":  # eager: a compiled graph would keep the norm in float32,
            return statistics(x, prompt, means, native=True)  # skipping the rounding that defines it
        return fused.run(statistics, x, prompt, means)

    def _massive(self, norms: torch.Tensor | None) -> torch.Tensor | None:
        if norms is None:
            return None
        if self.spec.select == "topk":
            return massive_mask_topk(norms, self.spec.topk)
        return massive_mask_threshold(norms, self.spec.lam)

    def _shuffled(self, site: TensorSite, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """`fill=shuffle`'s fill: the prompt with each head's positions permuted, seeded per layer and tensor
        by the model's own head indices (a split model permutes as the whole model would)."""
        key = (site.name, x.device)
        if key not in self._head_index:
            local = self.shard.get(site.name, (x.shape[1], tuple(range(x.shape[1]))))[1]
            self._head_index[key] = torch.tensor(local, device=x.device)
        return shuffled_prompt(x, prompt, self.spec.seed, _salt(site), self._head_index[key])

    def _random_scores(self, site: TensorSite, x: torch.Tensor) -> torch.Tensor:
        """Seeded `[1, H, D]` noise of this layer and tensor (drawn for all heads, sliced to a shard's)."""
        key = (site.layer, site.name, x.device)
        if key not in self._scores:
            salt = _salt(site)
            heads, local = self.shard.get(site.name, (x.shape[1], None))
            scores = random_scores(heads, x.shape[3], self.spec.seed, salt, x.device)
            self._scores[key] = scores if local is None else scores[:, list(local)]
        return self._scores[key]


def statistics(
    x: torch.Tensor, valid: torch.Tensor | None, means: bool, native: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass over a prompt's `x`: its column norms (which dims are massive; `native`: in `x`'s own
    dtype) and, with `means`, its column means (the fill), both over the positions `valid` marks.
    Compiled, the two reductions share one read of `x`."""
    return column_norms(x, valid, native), column_means(x, valid) if means else None


def edit_new_tokens(
    x: torch.Tensor,
    columns: torch.Tensor | None,
    fill: torch.Tensor | None,
    quant: str,
    axis: str,
    group: int | None,
    sym: bool,
    protect: torch.Tensor | None,
) -> torch.Tensor:
    """New tokens' `x` with the prompt's `columns` set to its `fill` and/or fake-quantized (`quant`)."""
    if columns is not None:
        assert fill is not None  # a prefill that chose columns kept their fill
        x = destroy_columns(x, columns, None, fill)
    if quant != "none":
        x = fake_quantize(x, quant, axis, group, sym, None, protect)
    return x


def _salt(site: TensorSite) -> int:
    """Separates the seeded draws of each layer and tensor."""
    return site.layer * 3 + "qkv".index(site.name)


def _widen(mask: torch.Tensor | None, start: int, width: int) -> torch.Tensor | None:
    """A `[B, H, d]` mask of dims `start:start+d` as a `[B, H, width]` one (False elsewhere)."""
    if mask is None or mask.shape[-1] == width:
        return mask
    before = mask.new_zeros((*mask.shape[:-1], start))
    after = mask.new_zeros((*mask.shape[:-1], width - start - mask.shape[-1]))
    return torch.cat([before, mask, after], dim=-1)
