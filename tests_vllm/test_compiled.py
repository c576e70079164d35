"""The vLLM engine as vLLM users run it: compiled with torch.compile (and on a GPU with CUDA graphs,
vLLM's default FULL_AND_PIECEWISE), the edit running inside vLLM's eager attention op. It gives the
HF engine's loglikelihoods and greedy generations, as the eager engine does (test_engines_agree).
"""

from __future__ import annotations

import pytest
from conftest import hf_engine, on_gpu, vllm_engine
from test_engines_agree import _passkey_requests, _requests, tolerance

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.errors import QKAblateError

VARIANTS = [{}, {"ablate": "massive"}]  # the eager engine runs every variant (test_engines_agree)


@pytest.fixture(scope="module")
def engines():
    return hf_engine(), vllm_engine(batch_size=8)


def test_the_engine_runs_compiled(engines):
    _, vllm = engines
    config = vllm.model.llm_engine.vllm_config
    assert not config.model_config.enforce_eager
    assert config.compilation_config.mode != 0  # torch.compile is on
    if on_gpu():
        assert config.compilation_config.cudagraph_mode.name == "FULL_AND_PIECEWISE"


@pytest.mark.parametrize("args", VARIANTS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "none")
def test_loglikelihoods_agree_compiled(engines, args):
    hf, vllm = engines
    spec = InterventionSpec.from_args(args)
    hf.use(spec)
    vllm.use(spec)
    requests = _requests()
    ours = [value for value, _ in vllm.loglikelihood(requests, disable_tqdm=True)]
    theirs = [value for value, _ in hf.loglikelihood(requests, disable_tqdm=True)]
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    assert worst <= tolerance(spec), worst
    if not spec.is_noop:
        assert vllm.counts().prefills == len(requests)  # every input's prefill went through the edit


def test_greedy_generations_agree_compiled(engines):
    """Decode steps replay FULL CUDA graphs on a GPU: the prompt's destroyed keys stay in the cache."""
    hf, vllm = engines
    spec = InterventionSpec(ablate="massive")
    hf.use(spec)
    vllm.use(spec)
    requests = _passkey_requests(hf.tokenizer, 6)
    assert vllm.generate_until(requests, disable_tqdm=True) == hf.generate_until(requests, disable_tqdm=True)


def test_stage_all_on_an_engine_whose_graphs_skip_decodes_is_one_line(engines):
    """On a GPU the default graphs replay decode steps without Python; on a CPU there are none."""
    _, vllm = engines
    spec = InterventionSpec(ablate="massive", stage="all")
    if on_gpu():
        with pytest.raises(QKAblateError, match="replays decode steps"):
            vllm.use(spec)
    else:
        vllm.use(spec)
        assert vllm.spec.stage == "all"
    with pytest.raises(QKAblateError, match="start it with enforce_eager=True"):
        vllm.use(InterventionSpec(ablate="massive", rope="pre"))
