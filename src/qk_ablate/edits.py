"""What an intervention does to one Q/K/V tensor in attention layout `[B, H, S, D]`, and the
per-forward state it needs: which positions are the prompt, and whether this is a prefill.

Per-call tensors live on the device of the tensor they edit: a model split over several GPUs
runs its layers on different devices, so the prompt masks are copied once per device and call
(never a host sync), and everything derived from a tensor (masks, fills, control scores) is
made on that tensor's device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from qk_ablate import fused
from qk_ablate.destroy import column_means, destroy_columns, fill_from_means
from qk_ablate.errors import QKAblateError
from qk_ablate.quantize import fake_quantize
from qk_ablate.selection import (
    column_norms,
    control_mask,
    massive_mask_threshold,
    massive_mask_topk,
    random_scores,
    summarize_selection,
)
from qk_ablate.spec import InterventionSpec

# An observer sees every prefill tensor before it is changed (after it, with `Editor(after=True)`):
# (layer, tensor name, 'pre'|'post', x [B,H,S,D], prompt mask).
Observer = Callable[[int, str, str, torch.Tensor, "torch.Tensor | None"], None]


@dataclass
class Step:
    """What the current forward is.

    prompt: [B, S] positions whose statistics select and fill (None: all positions);
    tokens: [B, S] non-padding positions, edited by `stage=all` (None: all positions);
    prefill: the cache was empty, so every position of this forward is new;
    slots: [B] each sample's place in a store of decisions that outlives the batch (vLLM's
    continuous batching, where a later step's decode rows are other samples than this prefill's),
    below `slot_count`; None: the decisions are kept for this batch as a whole (HF generation);
    idle: a decode step that the intervention leaves alone (`IDLE_DECODE`), so callers skip it at once.
    Both masks are on the input's device; `masks(device)` gives them where a layer runs.
    """

    prompt: torch.Tensor | None
    tokens: torch.Tensor | None
    prefill: bool
    slots: torch.Tensor | None = None
    slot_count: int = 0
    idle: bool = False
    _moved: dict[torch.device, tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=dict, repr=False)

    def masks(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prompt, tokens) on `device`, copied once per device and forward (asynchronously on GPUs)."""
        if self.prompt is None or self.prompt.device == device:
            return self.prompt, self.tokens
        if device not in self._moved:
            fast = device.type == "cuda"
            self._moved[device] = tuple(
                None if m is None else m.to(device, non_blocking=fast) for m in (self.prompt, self.tokens)
            )
        return self._moved[device]


IDLE_DECODE = Step(prompt=None, tokens=None, prefill=False, idle=True)


@dataclass
class _Kept:
    """A prefill's per-sample decisions, re-used by later steps (`stage=all`, or tensors rebuilt each step)."""

    columns: torch.Tensor | None
    fill: torch.Tensor | None
    protect: torch.Tensor | None
    edited: torch.Tensor | None  # the [B, P] positions the prefill edited (None: all)
    length: int  # P, the prefill's length


class Editor:
    """Applies one `InterventionSpec` to the tensors of the selected layers, forward by forward."""

    def __init__(
        self,
        spec: InterventionSpec,
        layers: frozenset[int],
        observer: Observer | None = None,
        observe: frozenset[str] = frozenset(),
        shard: Mapping[str, tuple[int, tuple[int, ...]]] | None = None,
        band: Mapping[str, torch.Tensor] | None = None,
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
        self.step = Step(prompt=None, tokens=None, prefill=True)
        self.shard = shard or {}
        self.band = dict(band or {})
        self._bands_moved: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._selected: dict[tuple[str, torch.device], torch.Tensor] = {}  # columns selected, per tensor and device
        self.heads_seen: dict[str, int] = {}  # per tensor: (sample, layer, head) triples that were selected from
        self._kept: dict[tuple[int, str], _Kept] = {}
        self._stored: dict[tuple[int, str], _Kept] = {}
        self._scores: dict[tuple[int, str, torch.device], torch.Tensor] = {}

    def begin(self, step: Step) -> None:
        """Start a forward; a prefill of a whole batch forgets the previous batch's decisions."""
        self.step = step
        if step.prefill and step.slots is None:
            self._kept.clear()

    def clear(self) -> None:
        """Forget the prompts' decisions (on detach: they hold device tensors)."""
        self._kept.clear()
        self._stored.clear()

    def edit(
        self,
        layer: int,
        name: str,
        where: str,
        x: torch.Tensor,
        select: tuple[int, int] | None = None,
        recomputed: bool = False,
        step: Step | None = None,
        into: bool = False,
    ) -> torch.Tensor | None:
        """The intervention on `x: [B, H, S, D]`; None = unchanged.

        `select`: the span of dims that selection runs over (MLA's rotary dims; None: all).
        `recomputed`: `x` holds every cached position again at each decode step (MLA's K/V).
        `step`: what `x`'s samples are, when not the forward given to `begin` (an engine whose
        step mixes prefills and decodes edits each part with its own).
        `into`: edit `x` itself (the attention wrapper's query and cache spans) and return it.
        """
        step = self.step if step is None else step
        watch = step.prefill and self.observer is not None and where in self.observe
        if watch and not self.after:
            self.observer(layer, name, where, x, step.masks(x.device)[0])
        new = self._edit(layer, name, x, select, recomputed, step, into) if self.changes(layer, name, where) else None
        if watch and self.after:  # what the intervention left: the edited tensor, or x where it changed nothing
            self.observer(layer, name, where, x if new is None else new, step.masks(x.device)[0])
        return new

    def _edit(
        self, layer: int, name: str, x: torch.Tensor, select: tuple[int, int] | None, recomputed: bool, step: Step,
        into: bool,
    ) -> torch.Tensor | None:
        spec = self.spec
        destroy, quantize = name in self._destroyed, name in self._quantized
        if step.prefill:
            keep = recomputed or spec.stage == "all"
            return self._edit_prompt(step, layer, name, x, destroy, quantize, select, keep, into)
        if recomputed:
            return self._edit_again(self._kept_for(step, layer, name), x, destroy, quantize)
        if spec.stage == "all":
            return self._edit_new_tokens(self._kept_for(step, layer, name), x, destroy, quantize, into)
        return None

    def changes(self, layer: int, name: str, where: str) -> bool:
        """Whether `edit` can change this tensor (so a caller may skip building its view)."""
        spec = self.spec
        return (not spec.is_noop and where == spec.rope and layer in self.layers
                and (name in self._destroyed or name in self._quantized))

    def _edit_prompt(
        self, step: Step, layer: int, name: str, x: torch.Tensor, destroy: bool, quantize: bool,
        select: tuple[int, int] | None, keep: bool, into: bool = False,
    ) -> torch.Tensor:
        """Select and fill from the prompt; edit the prompt (`stage=prefill`) or every real token (`all`)."""
        spec = self.spec
        prompt, tokens = step.masks(x.device)
        edited = prompt if spec.stage == "prefill" else tokens
        lo, hi = select or (0, x.shape[-1])
        means = destroy and spec.fill != "zero"
        norms, column_mean = fused.run(statistics, x, prompt, means) if spec.needs_selection else (None, None)
        norms = None if norms is None else norms[..., lo:hi]
        massive = self._massive(norms)
        columns = fill = None
        if destroy:
            columns = _widen(self._columns(layer, name, x[..., lo:hi], norms, massive, lo, hi), lo, x.shape[-1])
            fill = fill_from_means(column_mean, spec.fill, x, columns)
            x = fused.run(destroy_columns, x, columns, edited, fill, into=into)
        protect = _widen(massive, lo, x.shape[-1]) if spec.protect == "massive" else None
        self._count(name, columns if destroy else protect)
        if quantize:
            x = self._quantize(x, edited, protect, into=into or destroy)  # after destroy, x is already a new tensor
        if keep:
            self._keep(step, (layer, name), _Kept(columns, fill, protect, edited, x.shape[2]))
        return x

    def _columns(
        self, layer: int, name: str, x: torch.Tensor, norms: torch.Tensor, massive: torch.Tensor, lo: int, hi: int
    ) -> torch.Tensor:
        """The columns to destroy (of `x`, the span selected from): the massive ones, the control, or as many
        as are massive from a band."""
        spec = self.spec
        if spec.select == "band":
            allowed = self._band_on(name, x.device)[lo:hi]
            if spec.exclude == "massive":
                allowed = allowed & ~massive
            return control_mask(massive, self._random_scores(layer, name, x), allowed)
        if spec.ablate == "massive":
            return massive
        return control_mask(massive, norms if spec.control == "smallest" else self._random_scores(layer, name, x))

    def _band_on(self, name: str, device: torch.device) -> torch.Tensor:
        """The band's `[D]` mask on `device`, copied once per device."""
        key = (name, device)
        if key not in self._bands_moved:
            self._bands_moved[key] = self.band[name].to(device)
        return self._bands_moved[key]

    def _count(self, name: str, columns: torch.Tensor | None) -> None:
        """Tally what was selected, on the tensor's device (read once, after the run: no sync per layer)."""
        if columns is None:
            return
        key, total = (name, columns.device), columns.sum(dtype=torch.int64)  # a split model's layers tally apart
        self._selected[key] = self._selected[key] + total if key in self._selected else total
        self.heads_seen[name] = self.heads_seen.get(name, 0) + columns.shape[0] * columns.shape[1]

    def selection_counts(self) -> dict[str, dict[str, float]]:
        """Per tensor: mean selected dims per head and the prompts' (sample, layer, head) count."""
        return summarize_selection(self.selected, self.heads_seen)

    @property
    def selected(self) -> dict[str, int]:
        """Per tensor: the (head, dim) columns selected, summed over devices (reads them: call after the run)."""
        names = {name for name, _ in self._selected}
        return {name: sum(int(t) for (n, _), t in self._selected.items() if n == name) for name in names}

    def _edit_again(self, kept: _Kept, x: torch.Tensor, destroy: bool, quantize: bool) -> torch.Tensor:
        """A decode step of a tensor rebuilt from its cache: the prompt's edit again, then the new tokens'."""
        head, rest = x[:, :, : kept.length], x[:, :, kept.length :]
        if destroy:
            head = fused.run(destroy_columns, head, kept.columns, kept.edited, kept.fill)
        if quantize:
            head = self._quantize(head, kept.edited, kept.protect)
        if self.spec.stage == "all":
            rest = self._edit_new_tokens(kept, rest, destroy, quantize)
        return torch.cat([head, rest], dim=2)

    def _edit_new_tokens(self, kept: _Kept, x: torch.Tensor, destroy: bool, quantize: bool, into: bool = False) -> torch.Tensor:
        """`stage=all`'s decode work, the prompt's decisions applied to the new tokens: one fused pass."""
        spec = self.spec
        return fused.run(edit_new_tokens, x, kept.columns if destroy else None, kept.fill,
                         spec.quant if quantize else "none", spec.quant_axis, spec.group or None, spec.sym, kept.protect,
                         into=into)

    def _keep(self, step: Step, key: tuple[int, str], kept: _Kept) -> None:
        if step.slots is None:
            self._kept[key] = kept
            return
        old = self._stored.get(key) or _Kept(None, None, None, None, 0)
        self._stored[key] = _Kept(*(_store(o, n, step.slots, step.slot_count) for o, n in
                                    ((old.columns, kept.columns), (old.fill, kept.fill), (old.protect, kept.protect))),
                                  None, 0)

    def _kept_for(self, step: Step, layer: int, name: str) -> _Kept:
        kept = (self._kept if step.slots is None else self._stored).get((layer, name))
        if kept is None:
            raise QKAblateError("a decode step came without its prefill; start generation from an empty cache")
        if step.slots is None:
            return kept
        return _Kept(*(_rows(t, step.slots) for t in (kept.columns, kept.fill, kept.protect)), None, 0)

    def _quantize(
        self, x: torch.Tensor, valid: torch.Tensor | None, protect: torch.Tensor | None, into: bool = False
    ) -> torch.Tensor:
        spec = self.spec
        return fused.run(fake_quantize, x, spec.quant, spec.quant_axis, spec.group or None, spec.sym, valid, protect,
                         into=into)

    def _massive(self, norms: torch.Tensor | None) -> torch.Tensor | None:
        if not self.spec.needs_selection:
            return None
        if self.spec.select == "topk":
            return massive_mask_topk(norms, self.spec.topk)
        return massive_mask_threshold(norms, self.spec.lam)

    def _random_scores(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """Seeded `[1, H, D]` noise of this layer and tensor (drawn for all heads, sliced to a shard's)."""
        key = (layer, name, x.device)
        if key not in self._scores:
            salt = layer * 3 + "qkv".index(name)
            heads, local = self.shard.get(name, (x.shape[1], None))
            scores = random_scores(heads, x.shape[3], self.spec.seed, salt, x.device)
            self._scores[key] = scores if local is None else scores[:, list(local)]
        return self._scores[key]


def statistics(x: torch.Tensor, valid: torch.Tensor | None, means: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass over a prompt's `x`: its column norms (which dims are massive) and, with `means`, its
    column means (the fill), both over the positions `valid` marks. Compiled, the two reductions
    share one read of `x`."""
    return column_norms(x, valid), column_means(x, valid) if means else None


def edit_new_tokens(
    x: torch.Tensor, columns: torch.Tensor | None, fill: torch.Tensor | None, quant: str, axis: str,
    group: int | None, sym: bool, protect: torch.Tensor | None,
) -> torch.Tensor:
    """New tokens' `x` with the prompt's `columns` set to its `fill` and/or fake-quantized (`quant`)."""
    if columns is not None:
        x = destroy_columns(x, columns, None, fill)
    if quant != "none":
        x = fake_quantize(x, quant, axis, group, sym, None, protect)
    return x


def _store(store: torch.Tensor | None, value: torch.Tensor | None, slots: torch.Tensor, count: int) -> torch.Tensor | None:
    """`value`'s per-sample rows written at `slots` of a `[count, ...]` store (grown as needed)."""
    if value is None or value.dim() == 0:  # nothing, or one value for every sample (zero fill)
        return value
    if store is None or store.dim() == 0 or store.shape[1:] != value.shape[1:] or store.device != value.device:
        store = value.new_zeros((0, *value.shape[1:]))
    if store.shape[0] < count:
        store = torch.cat([store, value.new_zeros((count - store.shape[0], *value.shape[1:]))])
    store[slots.to(value.device)] = value
    return store


def _rows(store: torch.Tensor | None, slots: torch.Tensor) -> torch.Tensor | None:
    """The stored decisions of the samples at `slots` (a value shared by all samples as it is)."""
    if store is None or store.dim() == 0:
        return store
    return store[slots.to(store.device)]


def _widen(mask: torch.Tensor | None, start: int, width: int) -> torch.Tensor | None:
    """A `[B, H, d]` mask of dims `start:start+d` as a `[B, H, width]` one (False elsewhere)."""
    if mask is None or mask.shape[-1] == width:
        return mask
    before = mask.new_zeros((*mask.shape[:-1], start))
    after = mask.new_zeros((*mask.shape[:-1], width - start - mask.shape[-1]))
    return torch.cat([before, mask, after], dim=-1)
