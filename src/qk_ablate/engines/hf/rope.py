"""Which rotary pair, frequency, wavelength and band each Q/K head dimension has, read from the
model's own `inv_freq` buffer (so scaled RoPE variants such as llama3 are reported as they run).

Hugging Face's `rotate_half` layout: with a rotary width R (= head_dim, or head_dim times the
partial rotary factor, as in GPT-NeoX, Phi and StableLM), dim d < R belongs to pair d mod R/2
and turns at `inv_freq[d mod R/2]` radians per token; dims >= R are not rotated. The rotary dims
may start later in the head (MLA: `[nope | rope]`, so `start` = qk_nope_head_dim) and may pair
interleaved (DeepSeek's projection outputs with `rope_interleave`: dims 2i and 2i+1 form pair i;
its post-RoPE tensors are back in rotate-half order). Bands, by wavelength 2*pi/freq in tokens:

* `high`: shorter than 64 tokens, many turns within any sentence;
* `low`: longer than the model's context window (`max_position_embeddings`), less than one turn
  over the whole context, so these dims carry position almost not at all;
* `mid`: in between; `none`: not rotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from qk_ablate.core.vocabulary import TensorName
from qk_ablate.errors import QKAblateError

HIGH_BAND_TOKENS = 64.0


@dataclass(frozen=True)
class RopeDims:
    """Per head dimension: rotary pair index (-1 when not rotated), frequency, wavelength, band."""

    pair: tuple[int, ...]
    frequency: tuple[float, ...]  # radians per token (0 when not rotated)
    wavelength: tuple[float, ...]  # tokens (inf when not rotated)
    band: tuple[str, ...]
    context: int

    def as_dict(self, dim: int) -> dict[str, object]:
        return {
            "pair": self.pair[dim],
            "frequency": self.frequency[dim],
            "wavelength": self.wavelength[dim] if math.isfinite(self.wavelength[dim]) else None,
            "band": self.band[dim],
        }


def inv_freq_of(model: nn.Module) -> torch.Tensor:
    """The model's rotary `inv_freq` (the first one when it has several, e.g. local and global)."""
    for name, buffer in model.named_buffers():
        if name.endswith("inv_freq") and not name.endswith("original_inv_freq"):
            return buffer.detach().float().cpu()
    raise QKAblateError("this model has no rotary embedding (no inv_freq buffer), so its dims have no RoPE band")


def rope_dims(
    inv_freq: torch.Tensor, head_dim: int, context: int, start: int = 0, interleaved: bool = False
) -> RopeDims:
    """Pair, frequency, wavelength and band of each of `head_dim` dims (see the module docstring)."""
    half = int(inv_freq.numel())
    rotary = 2 * half
    if start + rotary > head_dim:
        after = f" after its first {start} dims" if start else ""
        raise QKAblateError(f"inv_freq has {half} frequencies, more than half the head dim {head_dim}{after}")
    pairs, freqs, waves, bands = [], [], [], []
    for dim in range(head_dim):
        if not start <= dim < start + rotary:
            pairs.append(-1)
            freqs.append(0.0)
            waves.append(math.inf)
            bands.append("none")
            continue
        pair = (dim - start) // 2 if interleaved else (dim - start) % half
        freq = float(inv_freq[pair])
        wave = 2 * math.pi / freq if freq > 0 else math.inf
        pairs.append(pair)
        freqs.append(freq)
        waves.append(wave)
        bands.append("high" if wave < HIGH_BAND_TOKENS else "low" if wave > context else "mid")
    return RopeDims(tuple(pairs), tuple(freqs), tuple(waves), tuple(bands), context)


def model_rope_dims(
    model: nn.Module, head_dim: int | None = None, where: str = "post", name: TensorName = "q"
) -> RopeDims:
    """`rope_dims` of one tensor (`where` 'pre'|'post', `name` 'q'|'k') of a loaded model.

    Its geometry (head dim, first rotary dim, pairing) comes from `arch.find_layout`, so MLA's
    `[nope | rope]` heads are right; `head_dim`, when given, must agree with it. The context
    window is the model's `max_position_embeddings`.
    """
    from qk_ablate.engines.hf.arch import find_layout

    site = find_layout(model).sites[0]
    source = site.sources[name]
    if where == "post":
        dims, start, interleaved = site.head_dim, site.rotary_start, False
    else:
        dims, start, interleaved = source.head_dim, source.rotary_start, source.interleaved
    if head_dim is not None and head_dim != dims:
        raise QKAblateError(f"{where}-RoPE {name} has heads of {dims} dims, not {head_dim}")
    config = getattr(model, "config", None)
    context = int(getattr(config, "max_position_embeddings", 0) or 0) or 4096
    return rope_dims(inv_freq_of(model), dims, context, start, interleaved)
