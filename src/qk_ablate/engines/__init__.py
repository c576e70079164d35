"""The engines that carry the core into a model, by name: `hf` (transformers, lm-eval's HFLM,
`--model qk_ablated`) and `vllm` (lm-eval's VLLM, `--model qk_ablated_vllm`). Each is a subpackage
that satisfies `core.engine`'s contract; neither imports the other, and this registry imports an
engine only when it is asked for (vLLM takes seconds to import and lives in its own environment).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from qk_ablate.errors import QKAblateError

if TYPE_CHECKING:
    from qk_ablate.core.engine import EngineModel
    from qk_ablate.core.spec import InterventionSpec


@dataclass(frozen=True)
class Engine:
    """One engine: its name (sweep configs, the run record), its lm-eval model name and class."""

    name: str
    model: str  # lm_eval --model NAME
    path: str  # module:class of its lm-eval model
    places_itself: bool  # the engine puts the model on its devices (no `device` argument)
    profiles: bool  # `qk-ablate profile` runs on its model (the HF engine's)

    def model_class(self) -> type[EngineModel]:
        """The lm-eval model class (importing it registers `self.model` with lm-eval)."""
        module, name = self.path.split(":")
        cls: type[EngineModel] = getattr(import_module(module), name)
        return cls

    def load(
        self, model_args: dict[str, Any], batch_size: int | str, device: str, specs: Iterable[InterventionSpec] = ()
    ) -> EngineModel:
        """The engine's lm-eval model for `model_args` (ours and the engine's own), started so that each
        of `specs` (the ones a sweep will `use` on it) can run: an engine may need settings for some
        (vLLM: eager mode for rope=pre), which it names in an `engine_settings(specs)` classmethod."""
        cls = self.model_class()
        options: dict[str, Any] = {"batch_size": batch_size, **({} if self.places_itself else {"device": device})}
        settings = getattr(cls, "engine_settings", None)
        if settings is not None:
            options.update(settings(specs))
        return cls(**{**options, **model_args})


ENGINES: dict[str, Engine] = {
    "hf": Engine("hf", "qk_ablated", "qk_ablate.engines.hf.lm:QKAblatedLM", places_itself=False, profiles=True),
    "vllm": Engine(
        "vllm", "qk_ablated_vllm", "qk_ablate.engines.vllm.lm:QKAblatedVLLM", places_itself=True, profiles=False
    ),
}


def engine(name: str) -> Engine:
    """The engine called `name`, or one line naming the engines there are."""
    if name not in ENGINES:
        raise QKAblateError(f"engine {name!r} is not an engine; choose one of: {', '.join(ENGINES)}")
    return ENGINES[name]
