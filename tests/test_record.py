"""One record of a run for every engine: `core.record.run_record` writes `config.qk_ablate` and
`qk_ablate_selected`, `read_record` reads them back, the tallies are typed and add up; each engine
satisfies the contract of `core.engine` and is found by name in the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import build, prompts, word_tokenizer

from qk_ablate import QKAblateError
from qk_ablate._version import __version__
from qk_ablate.core.engine import EngineAttachment, EngineModel
from qk_ablate.core.record import SelectionTally, read_record, run_record
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.engines import ENGINES, engine
from qk_ablate.engines.hf.attachment import Attachment

SRC = Path(__file__).resolve().parents[1] / "src" / "qk_ablate"


def test_the_record_names_model_engine_version_and_every_recorded_key():
    spec = InterventionSpec(ablate="massive", seed=2)
    info = run_record("smollm2-135m", "vllm", spec, SelectionTally({"q": 6}, {"q": 3}))
    assert info["qk_ablate"] == {"model": "smollm2-135m", "version": __version__, "engine": "vllm", **spec.to_dict()}
    assert info["qk_ablate_selected"] == {"q": {"dims_per_head": 2.0, "heads": 3}}
    record = read_record(info)
    assert (record.model, record.engine, record.version) == ("smollm2-135m", "vllm", __version__)
    assert record.intervention == spec.to_dict()


def test_files_written_before_the_engine_was_recorded_read_as_hf_runs():
    assert read_record({"qk_ablate": {"model": "m", "ablate": "massive"}}).engine == "hf"
    assert read_record({}).intervention == {}


def test_tallies_add_over_workers_and_summarise_per_head():
    one = SelectionTally({"q": 4, "k": 2}, {"q": 2, "k": 2})
    two = SelectionTally({"q": 2}, {"q": 2, "k": 1})
    total = one + two
    assert total == SelectionTally({"k": 2, "q": 6}, {"k": 3, "q": 4})
    assert total.summary() == {"k": {"dims_per_head": 0.6667, "heads": 3}, "q": {"dims_per_head": 1.5, "heads": 4}}
    assert SelectionTally.from_wire(total.to_wire()) == total


def test_only_the_record_module_writes_the_record_keys():
    """No engine writes `config.qk_ablate` by hand: the key appears as a dict key in core/record.py only."""
    writers = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value in ("qk_ablate", "qk_ablate_selected") for k in node.keys
            ):
                writers.add(str(path.relative_to(SRC)))
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                key = node.slice
                if isinstance(key, ast.Constant) and key.value in ("qk_ablate", "qk_ablate_selected"):
                    writers.add(str(path.relative_to(SRC)))
    assert writers == {"core/record.py"}


def test_the_hf_engine_writes_the_shared_record():
    from qk_ablate.engines.hf.lm import QKAblatedLM

    lm = QKAblatedLM(
        pretrained=build("llama"), tokenizer=word_tokenizer(), device="cpu", batch_size=1, ablate="massive"
    )
    lm.model(prompts(1, 16))
    info = lm.get_model_info()
    expected = run_record("LlamaForCausalLM", "hf", lm.spec, lm.attachment.tally())
    assert info["qk_ablate"] == expected["qk_ablate"]
    assert info["qk_ablate_selected"] == expected["qk_ablate_selected"]
    assert isinstance(lm, EngineModel)


def test_the_hf_attachment_satisfies_the_engine_contract():
    attachment = Attachment(build("llama"), InterventionSpec(ablate="massive"))
    assert isinstance(attachment, EngineAttachment)
    assert attachment.attach() is attachment
    attachment.remove()


def test_engines_are_found_by_name_and_an_unknown_one_is_one_line():
    assert {name: entry.model for name, entry in ENGINES.items()} == {"hf": "qk_ablated", "vllm": "qk_ablated_vllm"}
    assert engine("hf").model_class().__name__ == "QKAblatedLM"
    with pytest.raises(QKAblateError, match="engine 'tgi' is not an engine; choose one of: hf, vllm"):
        engine("tgi")
