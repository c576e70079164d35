"""The lm-eval model `qk_ablated_vllm`: lm-eval's `VLLM` with the same interventions inside vLLM.

Our keys are taken out of model_args and validated into the same `InterventionSpec` as the HF
engine's; every other vLLM argument keeps working. This class runs in the driver process; the
model runs in vLLM's workers, which it reaches through our worker extension
(`extension.QKAblateWorkerExtension`, named in vLLM's `worker_extension_cls`) and
`LLM.collective_rpc`, sending and receiving plain data only (`wire`). The results JSON records
the spec under `config.qk_ablate` with `engine: vllm`.

vLLM features that would change the experiment are switched off or refused, never silently
kept: prefix caching (a cached prefix is never seen by a prefill, so its statistics would be
missing) and chunked prefill (a prompt split over steps would be selected from a part of itself).
torch.compile and CUDA graphs are kept: the post-RoPE edit runs inside vLLM's attention op, which
stays eager between the compiled pieces (`attention_op`). What cannot run there is said in one
line and arranged (`graph_settings`): `rope=pre` hooks `qkv_proj`, inside the compiled graph, so
it runs eager; `stage=all` edits decode steps, so their FULL CUDA graphs give way to PIECEWISE ones.
Every input is registered with the workers before it is sent (`qk_ablate_set_prompts`), so a
loglikelihood continuation is not counted as prompt and a preempted generation, recomputed by
vLLM from its prompt and generated tokens, is edited as it was the first time.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qk_ablate.engines.vllm.compat import alias_cpu_build

alias_cpu_build()  # before lm-eval's vLLM module reads the version of `vllm`

import lm_eval.models  # noqa: E402,F401  (lm-eval's own models are registered before ours)
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.vllm_causallms import VLLM  # noqa: E402

from qk_ablate.core.record import SelectionTally, run_record  # noqa: E402
from qk_ablate.core.spec import InterventionSpec, split_model_args  # noqa: E402
from qk_ablate.engines.vllm.attention_op import refused_backend  # noqa: E402
from qk_ablate.engines.vllm.extension import QKAblateWorkerExtension  # noqa: E402
from qk_ablate.engines.vllm.wire import EditCounts, PromptLengths, prompts_to_wire  # noqa: E402
from qk_ablate.errors import QKAblateError  # noqa: E402
from qk_ablate.models.embedded import hf_folder, is_embedded  # noqa: E402
from qk_ablate.task_data.settings import evaluating  # noqa: E402

# On a CPU host `gpu_memory_utilization` is the share of the NUMA node's memory vLLM takes (and
# refuses to start when that much is not free); lm-eval's default of 0.9 rarely is.
CPU_MEMORY_FRACTION = 0.5

# vLLM arguments that would change what the intervention sees: (name, value we need, why).
_FORCED = (
    ("enable_prefix_caching", False, "a cached prefix skips the prefill that selects and destroys its dims"),
    ("enable_chunked_prefill", False, "a prompt split over steps would be selected from a part of itself"),
)
# CUDA-graph modes (vLLM's `compilation_config.cudagraph_mode`) whose replays can skip the edit:
# FULL graphs of mixed batches replay prefills; any FULL graph of decodes replays `stage=all`'s decode edits.
_SKIPS_PREFILLS = {"FULL"}
_SKIPS_DECODES = {"FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"}

log = logging.getLogger(__name__)


def graph_settings(specs: Iterable[InterventionSpec]) -> dict[str, Any]:
    """The vLLM arguments under which every one of `specs` is edited on every step it should be:
    eager for `rope=pre` (its hook sits inside the compiled graph), PIECEWISE CUDA graphs for
    `stage=all` (decode steps' attention must run eagerly); nothing otherwise."""
    edits = [spec for spec in specs if not spec.is_noop]
    if any(spec.rope == "pre" for spec in edits):
        return {"enforce_eager": True}
    if any(spec.stage == "all" for spec in edits):
        return {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}
    return {}


def _engine_keys() -> set[str]:
    """What lm-eval's VLLM and vLLM's EngineArgs take by name, so a typo of one of our keys is told apart."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return {*inspect.signature(VLLM.__init__).parameters, *(f.name for f in dataclasses.fields(EngineArgs))}


@register_model("qk_ablated_vllm")
class QKAblatedVLLM(VLLM):
    """lm-eval's VLLM whose attention destroys or quantizes Q/K/V dims as its `InterventionSpec` says."""

    # What vLLM mixes into its workers (`worker_extension_cls`): a subclass may add methods of its own.
    worker_extension: type[QKAblateWorkerExtension] = QKAblateWorkerExtension

    def __init__(self, pretrained: str = "smollm2-135m", **kwargs: Any) -> None:
        ours, rest = split_model_args(kwargs, _engine_keys())
        self.spec = InterventionSpec.from_args(ours)
        if self.spec.select == "band":
            raise QKAblateError(
                "select=band runs on the HF engine only (it reads the model's inv_freq); use --model qk_ablated"
            )
        if self.spec.kv_cache != "none":
            raise QKAblateError(
                f"kv_cache={self.spec.kv_cache} is transformers' QuantizedCache, HF engine only: use --model "
                "qk_ablated (vLLM quantizes its own cache with its argument kv_cache_dtype, e.g. fp8)"
            )
        _check_engine_args(rest)
        _check_backend(rest.get("attention_backend"), self.spec)
        for name, value, _ in _FORCED:
            rest[name] = value
        self._graphs = _with_graph_settings(rest, self.spec, on_cpu=_on_cpu())
        rest["worker_extension_cls"] = f"{self.worker_extension.__module__}.{self.worker_extension.__qualname__}"
        self._requested_model = str(pretrained)
        if is_embedded(pretrained):
            pretrained = hf_folder()
            rest.setdefault("dtype", "float32")  # as the HF engine runs it; vLLM's auto would pick bfloat16 on a CPU
        if "gpu_memory_utilization" not in rest and _on_cpu():
            rest["gpu_memory_utilization"] = CPU_MEMORY_FRACTION
        try:
            super().__init__(pretrained=pretrained, **rest)
        except RuntimeError as error:
            if "initialization failed" not in str(error):
                raise
            raise QKAblateError(
                f"vLLM's engine did not start ({error}); its own log above says why (on a CPU host: lower "
                "gpu_memory_utilization, which there is the share of the NUMA node's memory, or max_model_len)"
            ) from None
        self.use(self.spec)
        evaluating(self.tokenizer)  # tasks built after us size their prompts in our tokens

    @classmethod
    def engine_settings(cls, specs: Iterable[InterventionSpec]) -> dict[str, Any]:
        """Arguments a sweep passes at load so that every spec it will `use` can run on this engine."""
        return graph_settings(specs)

    def use(self, spec: InterventionSpec) -> None:
        """Attach `spec` in every worker (replacing the current one) without reloading the model."""
        self._graphs.check(spec)
        self.spec = spec = spec.for_architecture(self.model.model_config.hf_config.model_type)
        for answer in self.model.collective_rpc("qk_ablate_attach", args=(spec.to_wire(),)):
            if answer.get("refused"):
                raise QKAblateError(answer["refused"])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False):
        """Tell the worker each input's context length, so only context tokens count as the prompt.

        The inputs are built as lm-eval's VLLM builds them (context + continuation, cut from the
        left to the window); the continuation plays the part of generated tokens.
        """
        window = self.max_length - 1
        lengths = {}
        for _, context, continuation in requests:
            tokens = tuple((context + continuation)[-window:])
            lengths[tokens] = len(context) - max(0, len(context) + len(continuation) - window)
        with self._registered(lengths, once=True):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm)

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        """Register each generation prompt, so a preempted and recomputed request keeps its prompt."""
        if not generate:
            return super()._model_generate(requests, generate, sampling_params)
        with self._registered({tuple(tokens): len(tokens) for tokens in requests}):
            return super()._model_generate(requests, generate, sampling_params)

    @contextmanager
    def _registered(self, lengths: PromptLengths, once: bool = False) -> Iterator[None]:
        """Within this block the workers know `lengths` (an input's tokens -> its prompt length);
        `once`: loglikelihood inputs, whose tally counts each input minus its last token once."""
        if self.spec.is_noop:
            yield
            return
        self.model.collective_rpc("qk_ablate_set_prompts", args=(prompts_to_wire(lengths), once))
        try:
            yield
        finally:
            self.model.collective_rpc("qk_ablate_set_prompts", args=([],))

    def counts(self) -> EditCounts:
        """What the intervention has edited so far, summed over the workers."""
        answers = self.model.collective_rpc("qk_ablate_counts")
        return sum((EditCounts.from_wire(answer) for answer in answers), EditCounts())

    def get_model_info(self) -> dict:
        """The run record (`core.record`): the spec, the engine, and what the selection chose, summed over
        the workers (each holds its own heads)."""
        answers = self.model.collective_rpc("qk_ablate_tally")
        tally = sum((SelectionTally.from_wire(answer) for answer in answers), SelectionTally())
        return {**run_record(self._requested_model, "vllm", self.spec, tally), "qk_ablate_vllm": self.settings()}

    def settings(self) -> dict[str, Any]:
        """How vLLM ran (its version, attention backend, eager or compiled, CUDA-graph mode), for the results."""
        import vllm

        config = self.model.llm_engine.vllm_config
        compilation = config.compilation_config
        return {
            "version": vllm.__version__,
            "attention_backend": self.model.collective_rpc("qk_ablate_backend")[0],
            "enforce_eager": bool(config.model_config.enforce_eager),
            "cudagraph_mode": str(getattr(compilation.cudagraph_mode, "name", compilation.cudagraph_mode)),
            "async_scheduling": bool(getattr(config.scheduler_config, "async_scheduling", False)),
        }


@dataclass(frozen=True)
class _Graphs:
    """How the engine was started (eager, or which CUDA graphs), so `use` can refuse a spec that would
    be skipped on replayed steps."""

    eager: bool
    mode: str | None
    on_cpu: bool

    def check(self, spec: InterventionSpec) -> None:
        if spec.is_noop or self.eager:
            return
        if spec.rope == "pre":
            raise QKAblateError(
                "rope=pre hooks vLLM's qkv_proj, which runs inside the compiled graph, and this engine was started "
                "compiled; start it with enforce_eager=True (qk-ablate sweep does so when its grid names rope=pre)"
            )
        if self.on_cpu:
            return  # no CUDA graphs on a CPU host
        mode = self.mode or "FULL_AND_PIECEWISE"  # vLLM's default
        skips = _SKIPS_DECODES if spec.stage == "all" else _SKIPS_PREFILLS
        if mode in skips:
            what = "decode steps, which stage=all edits," if spec.stage == "all" else "prefills"
            raise QKAblateError(
                f"cudagraph_mode={mode} replays {what} without running the edit; start the engine with "
                'compilation_config={"cudagraph_mode": "PIECEWISE"} (qk-ablate sweep does so when its grid names '
                "stage=all)"
            )


def _with_graph_settings(args: dict[str, Any], spec: InterventionSpec, on_cpu: bool) -> _Graphs:
    """Add `graph_settings(spec)` to vLLM's `args` (refusing a user setting that contradicts them)."""
    wanted = graph_settings([spec])
    if "enforce_eager" in wanted:
        if "enforce_eager" in args and not _as_bool(args["enforce_eager"]):
            raise QKAblateError(
                "qk_ablated_vllm needs enforce_eager=True for rope=pre: its hook on qkv_proj runs inside the "
                "compiled graph; drop enforce_eager from model_args"
            )
        args["enforce_eager"] = True
        log.warning("qk_ablated_vllm: rope=pre hooks qkv_proj inside the compiled graph, so vLLM runs eager")
    config = _compilation_config(args.get("compilation_config"))
    wanted_mode = wanted.get("compilation_config", {}).get("cudagraph_mode")
    if wanted_mode and not on_cpu and "cudagraph_mode" not in config:
        config = args["compilation_config"] = {**config, "cudagraph_mode": wanted_mode}
        log.warning("qk_ablated_vllm: stage=all edits decode steps, so vLLM captures PIECEWISE CUDA graphs only")
    mode = config.get("cudagraph_mode")
    mode = None if mode is None else str(getattr(mode, "name", mode)).upper()
    graphs = _Graphs(_as_bool(args.get("enforce_eager", False)), mode, on_cpu)
    graphs.check(spec)
    return graphs


def _compilation_config(value: Any) -> dict[str, Any]:
    """The user's compilation_config as a dict (vLLM also takes a JSON string)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as error:
        raise QKAblateError(f"compilation_config is not valid JSON ({error}): {value}") from None
    if not isinstance(parsed, dict):
        raise QKAblateError(
            f"qk_ablated_vllm reads compilation_config as a JSON object, got {value!r}; "
            'pass e.g. compilation_config={"mode": 3, "cudagraph_mode": "PIECEWISE"}'
        )
    return parsed


def _check_backend(name: Any, spec: InterventionSpec) -> None:
    """A backend the edit cannot plan steps under, named by the user, is refused before loading (one
    vLLM picks itself is refused by the workers at attach, in the same words)."""
    refused = refused_backend(str(getattr(name, "name", name or "")))
    if refused is not None and not spec.is_noop:
        raise QKAblateError(refused)


def _check_engine_args(args: dict[str, Any]) -> None:
    """One line for every vLLM setting this engine cannot honour (yet)."""
    for name, value, why in _FORCED:
        if name in args and _as_bool(args[name]) != value:
            raise QKAblateError(f"qk_ablated_vllm needs {name}={value}: {why}; drop {name} from model_args")
    if int(args.get("data_parallel_size", 1) or 1) > 1:
        raise QKAblateError(
            "qk_ablated_vllm does not run with data_parallel_size > 1 (its Ray replicas would "
            "load the model without the hooks); use tensor_parallel_size, or several runs"
        )
    if int(args.get("pipeline_parallel_size", 1) or 1) > 1:
        raise QKAblateError(
            "qk_ablated_vllm does not run with pipeline_parallel_size > 1 (a rank would number "
            "its layers from its own share); split the model with tensor_parallel_size instead"
        )
    if args.get("worker_extension_cls"):
        raise QKAblateError(
            "qk_ablated_vllm sets worker_extension_cls itself (its workers' methods); drop it from model_args, "
            "or subclass QKAblatedVLLM and set its worker_extension to a subclass of QKAblateWorkerExtension"
        )
    if args.get("speculative_config"):
        raise QKAblateError(
            "qk_ablated_vllm does not run with speculative_config (its verification steps are "
            "not covered by our tests); drop it from model_args"
        )


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
