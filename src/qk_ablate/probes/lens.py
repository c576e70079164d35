"""Read every layer's residual stream as next-token logits: the logit lens and the tuned lens.

The *logit lens* (nostalgebraist 2020) pushes a layer's residual through the model's own final
norm and unembedding, as if the remaining layers did nothing. The *tuned lens* (Belrose et al.
2023) first translates the residual with a per-layer affine map trained to make that readout
match the model's final distribution, because the remaining layers do not merely add to the
residual: they rotate and rescale it, which the logit lens misreads as "not known yet".

Residuals are indexed 0..L: 0 is the embedding output, i the output of block i-1, and L the
final block's output *before* the final norm. Hugging Face's `hidden_states[-1]` is already
normed, so the last entry is read off the final norm's input instead; reading it through the
lens then gives the model's own logits exactly. The last entry has no translator, for the same
reason: its readout already *is* the final distribution.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qk_ablate.errors import QKAblateError

FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f")
CACHE_FORMAT = 1


@dataclass
class Readout:
    """The model's own ending, `residual -> logits`: final norm, unembedding, any logit soft-capping."""

    norm: nn.Module
    head: nn.Module
    softcap: float | None = None

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.norm(residual))
        if self.softcap:  # Gemma 2/3 squash the logits; a lens that skipped it would not end at the output
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def readout(model: nn.Module) -> Readout:
    """The final norm and unembedding of a Hugging Face causal LM, or one line saying why not."""
    base = getattr(model, "base_model", None) or model
    inner = getattr(base, "decoder", base)  # OPT keeps its final norm one level down
    norm = next((getattr(inner, n) for n in FINAL_NORMS if isinstance(getattr(inner, n, None), nn.Module)), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]
    if norm is None or head is None:
        raise QKAblateError(
            f"{type(model).__name__}: cannot find its final norm and unembedding, so no lens can read its layers"
        )
    return Readout(norm, head, getattr(model.config, "final_logit_softcapping", None))


def residuals(
    model: nn.Module, input_ids: torch.Tensor, positions: slice = slice(-1, None), **forward: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: the residual stream `[L+1, B, P, D]` at `positions`, and the model's logits `[B, 1, V]`
    at the last position.

    Whatever is attached to the model (an intervention) acts on this forward as on any other.
    """
    captured: list[torch.Tensor] = []
    hook = readout(model).norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        forward["logits_to_keep"] = 1  # a [S, vocab] block of logits that nobody reads costs as much as a layer
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False, **forward)
    finally:
        hook.remove()
    stream = [h[:, positions] for h in out.hidden_states[:-1]] + [captured[-1][:, positions]]
    return torch.stack(stream), out.logits[:, -1:]


class TunedLens(nn.Module):
    """Per-layer affine translators `h -> h + h @ W_l + b_l` for residuals 0..L-1; L is left as is.

    Starting at zero makes an untrained tuned lens exactly the logit lens, so training can only
    move away from it where the model's own distribution says so.
    """

    def __init__(self, num_layers: int, hidden: int, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_layers, hidden, hidden))
        self.bias = nn.Parameter(torch.zeros(num_layers, hidden))
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def num_layers(self) -> int:
        return self.weight.shape[0]

    def translate(self, stream: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """`stream` `[L+1, ..., D]` translated layer by layer (or one layer's `[..., D]` when `layer` is given)."""
        if layer is not None:
            if layer >= self.num_layers:
                return stream
            return stream + stream @ self.weight[layer].to(stream.dtype) + self.bias[layer].to(stream.dtype)
        if stream.shape[0] != self.num_layers + 1:
            raise QKAblateError(
                f"this tuned lens has {self.num_layers} translators, the model {stream.shape[0] - 1} layers"
            )
        head = stream[:-1].reshape(self.num_layers, -1, stream.shape[-1])  # [L, N, D]: one batched matmul
        moved = head + torch.bmm(head, self.weight.to(head.dtype)) + self.bias.to(head.dtype)[:, None]
        return torch.cat([moved.view_as(stream[:-1]), stream[-1:]])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CACHE_FORMAT,
            "weight": self.weight.detach().cpu(),
            "bias": self.bias.detach().cpu(),
            "meta": self.meta,
        }
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path, model_name: str | None = None) -> TunedLens:
        """A saved lens, refused with one line when missing, unreadable or made for another model."""
        path = Path(path)
        if not path.is_file():
            raise QKAblateError(
                f"no tuned lens at {path}; add --train-lens to train one (a few minutes on CPU), or use --lens logit"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            num_layers, hidden = state["weight"].shape[:2]
            lens = cls(num_layers, hidden, meta=state.get("meta"))
            lens.load_state_dict({"weight": state["weight"], "bias": state["bias"]})
        except Exception as error:  # a truncated file, another program's file
            raise QKAblateError(
                f"{path} is not a tuned lens saved by qk-ablate ({type(error).__name__}); retrain it with --train-lens"
            ) from None
        made_for = lens.meta.get("model")
        if model_name is not None and made_for not in (None, model_name):
            raise QKAblateError(
                f"the tuned lens at {path} was trained on {made_for!r}, not {model_name!r}; retrain it with --train-lens"
            )
        return lens


def log_probs(read: Readout, stream: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the readout in float32 (KL of nearly equal distributions needs it)."""
    return F.log_softmax(read(stream).float(), dim=-1)


def kl_to_final(read: Readout, stream: torch.Tensor, lens: TunedLens | None = None, chunk: int = 256) -> torch.Tensor:
    """Mean KL(final || lens) per layer `[L+1]` over the positions of `stream` `[L+1, N, D]`.

    The final distribution is the readout of residual L; chunks of positions keep the
    `[L+1, chunk, vocab]` logits within memory.
    """
    total = torch.zeros(stream.shape[0], dtype=torch.float64, device=stream.device)
    with torch.no_grad():
        for start in range(0, stream.shape[1], chunk):
            part = stream[:, start : start + chunk]
            part = lens.translate(part) if lens is not None else part
            lp = log_probs(read, part)
            final = lp[-1]
            total += (final.exp() * (final - lp)).sum(-1).sum(-1).double()
    return (total / stream.shape[1]).float()


@dataclass
class TrainSettings:
    """How a tuned lens is trained. The defaults fit the embedded model on 2 CPU cores in minutes."""

    steps: int = 60
    batch: int = 64  # positions per step, every layer
    lr: float = 1e-3
    warmup: int = 6
    weight_decay: float = 1e-3
    seed: int = 0
    history: list[float] = field(default_factory=list)


def train_tuned_lens(
    read: Readout,
    stream: torch.Tensor,
    settings: TrainSettings | None = None,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> TunedLens:
    """Fit translators on residuals `[L+1, N, D]` (positions of the model's own forwards) to KL(final || lens).

    AdamW with a linear warm-up then cosine decay: few steps of few positions are all a CPU
    allows, and Adam needs no learning-rate search across models whose residual scales differ
    by orders of magnitude. Layers share nothing, so each layer is stepped through on its own,
    one `[positions, vocab]` logits block at a time, with the gradient of the unembedding
    written out by hand (`_Unembed`): autograd's copy of the vocabulary-wide tensors was most
    of the cost on a CPU.
    """
    settings = settings or TrainSettings()
    layers, count, hidden = stream.shape[0] - 1, stream.shape[1], stream.shape[2]
    lens = TunedLens(layers, hidden, meta).to(stream.device)
    optimizer = torch.optim.AdamW(lens.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _rate(s, settings.warmup, settings.steps))
    generator = torch.Generator().manual_seed(settings.seed)
    unembed = _Unembed(read, stream.device)
    for step in range(settings.steps):
        pick = torch.randint(count, (min(settings.batch, count),), generator=generator).to(stream.device)
        batch = stream[:, pick].float()
        with torch.no_grad():
            target = log_probs(read, batch[-1])  # the final distribution, in full precision
            final = target.exp()
            entropy = torch.bmm(final.unsqueeze(1), target.unsqueeze(2)).view(-1).neg()
        weight_grad, bias_grad, total = torch.zeros_like(lens.weight), torch.zeros_like(lens.bias), 0.0
        for layer in range(layers):
            with torch.no_grad():
                moved = lens.translate(batch[layer], layer)
            moved.requires_grad_(True)
            normed = read.norm(moved)
            grad, loss = unembed.kl_grad(normed.detach(), final, entropy)
            (moved_grad,) = torch.autograd.grad(normed, moved, grad)
            weight_grad[layer] = batch[layer].T @ moved_grad  # moved = x + x W + b
            bias_grad[layer] = moved_grad.sum(0)
            total += loss
        lens.weight.grad, lens.bias.grad = weight_grad, bias_grad
        optimizer.step()
        schedule.step()
        settings.history.append(total / layers)
        if progress is not None:
            progress(step, total / layers)
    lens.meta.update(
        {
            "steps": settings.steps,
            "batch": settings.batch,
            "lr": settings.lr,
            "positions": count,
            "precision": str(unembed.dtype).removeprefix("torch."),
        }
    )
    return lens.eval()


class _Unembed:
    """KL(final || readout) and its gradient at the final norm's output, without autograd.

    The two vocabulary-wide matmuls run in bfloat16 where the hardware has fast bfloat16 (CUDA,
    CPUs with AVX512-BF16/AMX: several times faster than float32 there); the softmax and the
    loss stay in float32. The reported KL tables are always computed in float32 (`kl_to_final`).
    """

    def __init__(self, read: Readout, device: torch.device, dtype: torch.dtype | None = None) -> None:
        fast = device.type == "cuda" or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        self.dtype = dtype or (torch.bfloat16 if fast else torch.float32)
        weight = read.head.weight
        assert isinstance(weight, torch.Tensor), f"{type(read.head).__name__}.weight is not a tensor"
        self.weight = weight.detach().to(device, self.dtype)
        bias = getattr(read.head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(device, self.dtype)
        self.softcap = read.softcap

    def kl_grad(self, normed: torch.Tensor, final: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(d mean-KL / d normed, mean KL) for final probabilities `final` `[N, V]` of entropy `entropy` `[N]`.

        KL = sum p log p - (p . logits - logsumexp(logits)), so the lens's log-softmax is never
        written out; its gradient at the logits is softmax - p. Few passes over `[N, V]`.
        """
        with torch.no_grad():
            logits = F.linear(normed.to(self.dtype), self.weight, self.bias).float()
            squash = None
            if self.softcap:  # logits = c tanh(z / c), whose derivative is 1 - (logits / c)^2
                logits = torch.tanh(logits / self.softcap) * self.softcap
                squash = 1 - (logits / self.softcap) ** 2
            norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            dot = torch.bmm(final.unsqueeze(1), logits.unsqueeze(2)).view(-1)
            loss = (dot.neg_().add_(norm.view(-1)).sub_(entropy)).mean().item()
            grad = logits.sub_(norm).exp_().sub_(final)  # softmax - p, in place
            if squash is not None:
                grad *= squash
            return (grad.to(self.dtype) @ self.weight).to(normed.dtype) / normed.shape[0], loss


def _rate(step: int, warmup: int, steps: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def collect(model: nn.Module, inputs: list[torch.Tensor], per_prompt: int = 64, seed: int = 0) -> torch.Tensor:
    """Residuals `[L+1, N, D]` of the plain model at up to `per_prompt` seeded positions of each input.

    Each input's last position is always among them (the one the depth view reads); the rest are
    drawn at random, so long filler-heavy prompts do not outweigh short ones.
    """
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for ids in inputs:
        stream, _ = residuals(model, ids.view(1, -1), positions=slice(None))
        length = stream.shape[2]
        rest = torch.randperm(length - 1, generator=generator)[: max(0, per_prompt - 1)]
        pick = torch.cat([rest.sort().values, torch.tensor([length - 1])]).to(stream.device)
        parts.append(stream[:, 0, pick])
    return torch.cat(parts, dim=1)
