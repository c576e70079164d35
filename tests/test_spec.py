"""The intervention spec: parsing lm-eval model_args values, validation, one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
from lm_eval.utils import simple_parse_args_string

from qk_ablate.core.spec import CHOICES, InterventionSpec, split_model_args
from qk_ablate.errors import QKAblateError


def parse(text: str) -> tuple[InterventionSpec, dict]:
    """As lm-eval does it: split the model_args string, then take our keys out."""
    ours, rest = split_model_args(simple_parse_args_string(text))
    return InterventionSpec.from_args(ours), rest


def test_defaults_follow_the_paper():
    spec = InterventionSpec()
    assert (spec.ablate, spec.select, spec.lam, spec.fill, spec.rope, spec.stage) == (
        "none",
        "threshold",
        5.0,
        "mean",
        "post",
        "prefill",
    )
    assert spec.is_noop


def test_every_spec_key_is_a_field_and_frozen():
    # every user key is a field; the two others record how a preset was resolved
    assert set(CHOICES) | {"preset_for", "given"} == {f.name for f in dataclasses.fields(InterventionSpec)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        InterventionSpec().ablate = "massive"


def test_lm_eval_string_round_trip_separates_hflm_args():
    spec, rest = parse(
        "pretrained=smollm2-135m,dtype=float32,ablate=massive,select=topk,topk=3,fill=zero,rope=pre,"
        "stage=all,targets=k,layers=0-3;8,quant=int4,quant_targets=kv,quant_axis=channel,group=32,"
        "sym=false,protect=massive,seed=7,lam=4,control=smallest,batch_size=2"
    )
    assert rest == {"pretrained": "smollm2-135m", "dtype": "float32", "batch_size": 2}
    assert spec.to_dict() == {
        "ablate": "massive",
        "select": "topk",
        "lam": 4.0,
        "topk": 3,
        "fill": "zero",
        "control": "smallest",
        "seed": 7,
        "rope": "pre",
        "stage": "all",
        "targets": "k",
        "layers": "0-3;8",
        "quant": "int4",
        "quant_targets": "kv",
        "quant_axis": "channel",
        "group": 32,
        "sym": False,
        "protect": "massive",
    }
    assert spec.layer_indices(10) == frozenset({0, 1, 2, 3, 8})


def test_none_values_from_lm_eval_mean_none():
    spec, _ = parse("ablate=none,quant=none,protect=none")
    assert spec.is_noop


@pytest.mark.parametrize(
    "text, message",
    [
        ("ablate=massiv", r"ablate='massiv' is not valid; choose one of: none, massive, nonmassive"),
        ("fill=median", "choose one of: mean, shared_mean, tensor_mean, zero, shuffle"),
        ("quant=int5", "choose one of: none, int8, int4, int3, int2, fp8"),
        ("lam=-1", "lam=-1.0 must be a positive number"),
        ("topk=1.5", "topk=1.5 is not valid; it must be an integer"),
        ("sym=maybe", "use true or false"),
        ("layers=a-b", "layers='a-b' is not valid"),
        ("layers=5-2", "runs backwards"),
        ("quant=fp8,sym=false", "fp8 is symmetric only"),
        ("protect=massive", "protect=massive needs a quantizer"),
        ("quant=int4,quant_axis=tensor,group=8", "group= cannot be used with quant_axis=tensor"),
        ("layers=0,3,5", "list layers with ';'"),
        ("preset=jin", "choose one of: none, jin2025"),
        ("band=low", "band=low only works with select=band"),
        ("select=band,ablate=massive", "select=band needs exactly one of band=low|mid|high or pairs=A-B"),
        ("select=band,ablate=massive,band=low,pairs=22-25", "needs exactly one of"),
        ("select=band,ablate=massive,pairs=25-22", "pairs='25-22': range 25-22 runs backwards"),
        ("select=band,ablate=massive,band=mid,exclude=all", "exclude='all' is not valid; choose one of: none, massive"),
        ("select=band,ablate=nonmassive,band=mid", "select=band chooses its own dims, so it has no control"),
        ("select=band,band=mid,ablate=massive,quant=int4,protect=massive", "cannot be used with select=band"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_fix(text, message):
    with pytest.raises(QKAblateError, match=message) as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(QKAblateError, match="unknown intervention key 'ablation'"):
        InterventionSpec.from_args({"ablation": "massive"})


def test_layers_accept_python_lists_from_the_api():
    spec = InterventionSpec.from_args({"layers": [0, 3, 5]})
    assert spec.layer_indices(6) == frozenset({0, 3, 5})
    with pytest.raises(QKAblateError, match="the model has 4 layers"):
        spec.layer_indices(4)
