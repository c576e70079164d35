"""Tests for the fake quantizers in qk_ablate.core.quantize (CPU, no model)."""

from __future__ import annotations

import itertools

import pytest
import torch

from qk_ablate.core.quantize import FP8_MAX, fake_quantize
from qk_ablate.core.vocabulary import BITS
from qk_ablate.core.vocabulary import QUANT_AXES as AXES
from qk_ablate.core.vocabulary import QUANT_FORMATS as FORMATS

# Every supported (fmt, axis, sym, group) combination; groups sized for the shapes used below
# (D = 8, S = 10: token group 4 divides D, channel group 4 leaves a short last group).
CONFIGS = [
    (fmt, axis, sym, group)
    for fmt, axis, sym in itertools.product(FORMATS, AXES, (True, False))
    if not (fmt == "fp8" and not sym)
    for group in ((None,) if axis == "tensor" else (None, 4))
]


def _ids(cfg):
    fmt, axis, sym, group = cfg
    return f"{fmt}-{axis}-{'sym' if sym else 'asym'}-g{group}"


def _data(shape=(2, 3, 10, 8), seed=0) -> torch.Tensor:
    """Gaussian data with a few massive values, like RoPE Q/K."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., 1] *= 20.0  # one massive channel in every head
    return x


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float32 tensor, so NaN/inf/-0.0 compare exactly."""
    return t.contiguous().view(torch.int32)


# ---------------------------------------------------------------------------------------------
# constants for the spec validator


def test_exported_constants():
    assert BITS == {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
    assert FORMATS == ("int8", "int4", "int3", "int2", "fp8")
    assert AXES == ("token", "channel", "tensor")


# ---------------------------------------------------------------------------------------------
# hand-computed examples


# One massive channel (d = 0) next to three small ones.  Each small channel is a multiple of
# absmax / 7, so int4-sym per channel (qmax 7) represents it exactly.
HAND = torch.tensor(
    [
        [70.0, 1.0, 0.5, -1.75],
        [-28.0, 3.0, -1.0, 0.25],
        [14.0, -6.0, 1.5, 0.75],
        [56.0, 7.0, 3.5, -0.5],
    ]
)[None, None]  # [1, 1, 4, 4]: 4 tokens x 4 channels


def test_hand_example_channel_axis_keeps_small_channels():
    q = fake_quantize(HAND, "int4", "channel")
    # d=0: scale 70/7 = 10 -> 70, -2.8->-3, 1.4->1, 5.6->6 (times 10)
    # d=1: scale 1, d=2: scale 0.5, d=3: scale 0.25: all values already on their grids
    expected = torch.tensor(
        [
            [70.0, 1.0, 0.5, -1.75],
            [-30.0, 3.0, -1.0, 0.25],
            [10.0, -6.0, 1.5, 0.75],
            [60.0, 7.0, 3.5, -0.5],
        ]
    )[None, None]
    assert torch.equal(q, expected)
    assert torch.equal(q[..., 1:], HAND[..., 1:])  # small channels: zero error


def test_hand_example_token_axis_crushes_small_values():
    q = fake_quantize(HAND, "int4", "token")
    # token scales = row absmax / 7 = 10, 4, 2, 8: the big channel sets every token's scale
    # row 0: 1/10, 0.5/10, -1.75/10 -> 0
    # row 1: 3/4 = 0.75 -> 1 -> 4; -1/4, 0.25/4 -> 0
    # row 2: -6/2 = -3 -> -6; 1.5/2 = 0.75 -> 1 -> 2; 0.75/2 = 0.375 -> 0
    # row 3: 7/8 = 0.875 -> 1 -> 8; 3.5/8, -0.5/8 -> 0
    expected = torch.tensor(
        [
            [70.0, 0.0, 0.0, 0.0],
            [-28.0, 4.0, 0.0, 0.0],
            [14.0, -6.0, 2.0, 0.0],
            [56.0, 8.0, 0.0, 0.0],
        ]
    )[None, None]
    assert torch.equal(q, expected)
    err_token = (q - HAND)[..., 1:].abs().sum()
    err_channel = (fake_quantize(HAND, "int4", "channel") - HAND)[..., 1:].abs().sum()
    assert err_channel == 0 and err_token > 5


def test_hand_example_protect_big_channel_with_token_axis():
    # Protecting the massive channel lets each token's scale come from its small values.
    protect = torch.tensor([[[True, False, False, False]]])
    q = fake_quantize(HAND, "int4", "token", protect=protect)
    assert torch.equal(q[..., 0], HAND[..., 0])
    # row 0: absmax 1.75, scale 0.25: 1 -> 4 -> 1.0, 0.5 -> 2 -> 0.5, -1.75 -> -7 (pinned)
    # row 1: absmax 3, scale 3/7: -1*7/3 = -2.33 -> -2 -> -6/7, 0.25*7/3 = 0.583 -> 1 -> 3/7
    row1 = torch.tensor([3.0, -2.0 * (3.0 / 7.0), 1.0 * (3.0 / 7.0)])
    assert torch.equal(q[0, 0, 0, 1:], torch.tensor([1.0, 0.5, -1.75]))
    assert torch.equal(q[0, 0, 1, 1:], row1)


def test_hand_example_int2_asym_token():
    x = torch.tensor([0.0, 0.9, 2.2, 3.0, -1.0, -0.4, 0.1, 2.0]).reshape(1, 1, 1, 8)
    q = fake_quantize(x, "int2", "token", group=4, sym=False)
    # group 1: min 0, max 3, scale 1 -> 0, 1, 2, 3
    # group 2: min -1, max 2, scale 1 -> -1, round(0.6)=1 -> 0, round(1.1)=1 -> 0, 2
    assert torch.equal(q, torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0, 0.0, 0.0, 2.0]).reshape(1, 1, 1, 8))


def test_hand_example_fp8():
    # absmax 448 -> scale 1: plain E4M3 rounding (3 mantissa bits)
    x = torch.tensor([448.0, 1.0, 1.0625, 1.1, 100.0, 0.001, -3.3, 0.0]).reshape(1, 1, 1, 8)
    q = fake_quantize(x, "fp8", "token")
    # 1.0625 is a tie between 1.0 and 1.125 -> even mantissa 1.0; 100 = 1.5625*64 -> 1.5*64 = 96;
    # 0.001 is in the subnormal range (step 2**-9) -> 2**-9; -3.3 -> -3.25
    expected = torch.tensor([448.0, 1.0, 1.0, 1.125, 96.0, 2.0**-9, -3.25, 0.0]).reshape(1, 1, 1, 8)
    assert torch.equal(q, expected)


# ---------------------------------------------------------------------------------------------
# error bounds


def _int_scale(x: torch.Tensor, fmt: str, sym: bool, dims: tuple[int, ...]) -> torch.Tensor:
    bits = BITS[fmt]
    if sym:
        return x.abs().amax(dim=dims, keepdim=True) / (2 ** (bits - 1) - 1)
    return (x.amax(dim=dims, keepdim=True) - x.amin(dim=dims, keepdim=True)) / (2**bits - 1)


@pytest.mark.parametrize("fmt", ["int8", "int4", "int3", "int2"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("axis", AXES)
def test_int_error_within_half_step(fmt, sym, axis):
    x = _data()
    q = fake_quantize(x, fmt, axis, sym=sym)
    dims = {"token": (3,), "channel": (2,), "tensor": (1, 2, 3)}[axis]
    scale = _int_scale(x, fmt, sym, dims)
    err = (x - q).abs()
    assert torch.all(err <= scale / 2 * (1 + 1e-5) + 1e-7)
    # and it really quantizes: the worst error is a sizeable part of the half step
    assert err.amax() > 0.25 * (scale / 2).amin()
    # every output lies on its group's grid
    base = 0.0 if sym else x.amin(dim=dims, keepdim=True)
    k = (q - base) / scale
    assert torch.allclose(k, k.round(), atol=1e-3)
    levels = 2 ** (BITS[fmt] - 1) - 1 if sym else 2 ** BITS[fmt] - 1
    assert k.round().abs().amax() <= levels


def test_int_error_shrinks_with_bits():
    x = _data()
    errs = [(fake_quantize(x, f, "channel") - x).abs().mean() for f in ("int2", "int3", "int4", "int8")]
    assert errs[0] > errs[1] > errs[2] > errs[3] > 0


def test_int_token_groups_error_bound():
    x = _data()
    q = fake_quantize(x, "int3", "token", group=2, sym=False)
    xg = x.reshape(2, 3, 10, 4, 2)
    scale = _int_scale(xg, "int3", False, (-1,))
    assert torch.all((xg - q.reshape(xg.shape)).abs() <= scale / 2 * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("axis", AXES)
def test_fp8_relative_error(axis):
    x = _data() * torch.logspace(-3, 3, 8)  # wide dynamic range within groups
    q = fake_quantize(x, "fp8", axis)
    dims = {"token": (3,), "channel": (2,), "tensor": (1, 2, 3)}[axis]
    scale = x.abs().amax(dim=dims, keepdim=True) / FP8_MAX
    err = (x - q).abs()
    # E4M3 has 3 mantissa bits: relative error <= 2**-4 for normals; subnormal step is 2**-9
    bound = torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10)
    assert torch.all(err <= bound * (1 + 1e-5))
    normal = x.abs() >= scale * 2.0**-6
    assert torch.all((err / x.abs())[normal] <= 2.0**-4 * (1 + 1e-5))
    assert err.amax() > 0


# ---------------------------------------------------------------------------------------------
# idempotence, zero ranges, dtype


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_quantize_twice_equals_once(cfg):
    fmt, axis, sym, group = cfg
    x = _data()
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :3] = False
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[0, 1, 5] = True
    for kw in ({}, {"valid": valid, "protect": protect}):
        once = fake_quantize(x, fmt, axis, group, sym, **kw)
        twice = fake_quantize(once, fmt, axis, group, sym, **kw)
        assert not torch.equal(once, x)
        assert torch.equal(twice, once)


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_zero_and_constant_groups_unchanged(cfg):
    fmt, axis, sym, group = cfg
    zeros = torch.zeros(1, 2, 6, 8)
    q = fake_quantize(zeros, fmt, axis, group, sym)
    assert torch.equal(q, zeros)
    const = torch.full((1, 2, 6, 8), -2.5)
    q = fake_quantize(const, fmt, axis, group, sym)
    assert torch.equal(q, const)  # asym: zero range; sym: -2.5 is the pinned grid end


def test_sample_without_valid_tokens_unchanged():
    x = _data()
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1] = False
    for fmt, axis, sym, group in CONFIGS:
        q = fake_quantize(x, fmt, axis, group, sym, valid=valid)
        assert torch.equal(q[1], x[1])
        assert not torch.isnan(q).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_and_shape_preserved(dtype):
    x = _data().to(dtype)
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[:, :, 1] = True
    q = fake_quantize(x, "int4", "channel", protect=protect)
    assert q.dtype == dtype and q.shape == x.shape
    assert torch.equal(q[..., 1], x[..., 1])
    ref = fake_quantize(x.float(), "int4", "channel", protect=protect).to(dtype)
    assert torch.equal(q, ref)


# ---------------------------------------------------------------------------------------------
# protect


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_protect_columns_exact_and_others_changed(cfg):
    fmt, axis, sym, group = cfg
    x = _data()
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[0, 0, [1, 6]] = True
    protect[1, 2, 0] = True
    q = fake_quantize(x, fmt, axis, group, sym, protect=protect)
    cols = protect[:, :, None, :].expand_as(x)
    assert torch.equal(q[cols], x[cols])
    # most unprotected entries move (asym groups of 4 keep their min and max: at most half)
    assert (q[~cols] != x[~cols]).float().mean() > 0.3


@pytest.mark.parametrize("fmt", ["int8", "int4", "int2", "fp8"])
@pytest.mark.parametrize("axis", ["token", "tensor"])
def test_protected_outlier_does_not_inflate_error(fmt, axis):
    x = torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(3))
    x[0, 0, :, 2] = 1e4  # huge outlier column in sample 0, head 0
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[0, 0, 2] = True
    others = ~protect[:, :, None, :].expand_as(x)
    q_plain = fake_quantize(x, fmt, axis)
    q_prot = fake_quantize(x, fmt, axis, protect=protect)
    # the slice whose scales the outlier reaches: head 0 (token axis) or all of sample 0 (tensor)
    sl = (0, 0) if axis == "token" else (0,)
    hit = others[sl]
    err_plain = (q_plain[sl] - x[sl]).abs()[hit]
    err_prot = (q_prot[sl] - x[sl]).abs()[hit]
    assert err_prot.mean() < err_plain.mean()
    if fmt != "fp8":
        assert torch.all(q_plain[sl][hit] == 0)  # unprotected: the outlier's scale crushes all
        # protected: error within half a step of the scale set by the ordinary values alone
        dims = (-1,) if axis == "token" else (0, 1, 2)
        absmax = torch.where(hit, x[sl].abs(), 0.0).amax(dim=dims, keepdim=True)
        half_step = (absmax / (2 ** (BITS[fmt] - 1) - 1) / 2).expand_as(x[sl])[hit]
        assert torch.all(err_prot <= half_step * (1 + 1e-5))
        if fmt != "int2":  # int2 ({-s, 0, s}) crushes most gaussian values with or without
            assert err_prot.mean() < 0.5 * err_plain.mean()
    # exactly: the protected column behaves as if it were 0 (sym absmax ignores zeros)
    x0 = x.clone()
    x0[0, 0, :, 2] = 0.0
    assert torch.equal(q_prot[others], fake_quantize(x0, fmt, axis)[others])


def test_protect_excluded_from_asym_min_max():
    x = _data(seed=4)
    x[1, 2, :, 3] = -500.0
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[1, 2, 3] = True
    q = fake_quantize(x, "int4", "tensor", sym=False, protect=protect)
    # reference: quantize sample 1's other columns alone as one flat group
    keep = ~protect[1][:, None, :].expand(3, 10, 8)
    ref = fake_quantize(x[1][keep].reshape(1, 1, 1, -1), "int4", "token", sym=False).flatten()
    assert torch.equal(q[1][keep], ref)
    assert torch.equal(q[1][~keep], x[1][~keep])


# ---------------------------------------------------------------------------------------------
# padding and batch invariance


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_padding_unchanged_and_ignored(cfg):
    fmt, axis, sym, group = cfg
    x = _data()
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :4] = False  # left padding
    valid[1, 7:] = False  # right padding
    pad = ~valid[:, None, :, None].expand_as(x)
    q1 = fake_quantize(x, fmt, axis, group, sym, valid=valid)
    x2 = x.clone()
    x2[pad] = torch.tensor([1e6, -1e6, float("inf"), float("nan")]).repeat(pad.sum() // 4 + 1)[: pad.sum()]
    q2 = fake_quantize(x2, fmt, axis, group, sym, valid=valid)
    assert torch.equal(_bits(q2[pad]), _bits(x2[pad]))  # padding returned bit-exactly
    assert torch.equal(q1[~pad], q2[~pad])  # padding values never reach a scale
    assert not torch.isnan(q2[~pad]).any()


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_batch_invariance_left_padding(cfg):
    fmt, axis, sym, group = cfg
    H, S, D = 2, 11, 8
    lengths = [11, 7, 3, 6]
    g = torch.Generator().manual_seed(7)
    samples = [torch.randn(1, H, n, D, generator=g) * torch.linspace(0.1, 30, D) for n in lengths]
    batch = torch.randn(len(lengths), H, S, D, generator=g) * 100  # garbage in the padding
    valid = torch.zeros(len(lengths), S, dtype=torch.bool)
    for b, (n, s) in enumerate(zip(lengths, samples)):
        batch[b, :, S - n :] = s[0]
        valid[b, S - n :] = True
    protect = torch.zeros(len(lengths), H, D, dtype=torch.bool)
    protect[1, 0, 3] = True
    q = fake_quantize(batch, fmt, axis, group, sym, valid=valid, protect=protect)
    for b, (n, s) in enumerate(zip(lengths, samples)):
        alone = fake_quantize(s, fmt, axis, group, sym, protect=protect[b : b + 1])
        assert torch.equal(q[b, :, S - n :], alone[0])
        assert torch.equal(q[b, :, : S - n], batch[b, :, : S - n])


# ---------------------------------------------------------------------------------------------
# groups


def test_token_groups_match_separate_quantization():
    x = _data()
    q = fake_quantize(x, "int4", "token", group=2, sym=False)
    for i in range(4):
        sl = slice(2 * i, 2 * i + 2)
        assert torch.equal(q[..., sl], fake_quantize(x[..., sl], "int4", "token", sym=False))
    assert not torch.equal(q, fake_quantize(x, "int4", "token", sym=False))


@pytest.mark.parametrize("sym", [True, False])
def test_channel_groups_with_short_last_group(sym):
    x = _data()  # S = 10, groups of 4 -> [0:4], [4:8], [8:10]
    q = fake_quantize(x, "int3", "channel", group=4, sym=sym)
    for sl in (slice(0, 4), slice(4, 8), slice(8, 10)):
        assert torch.equal(q[:, :, sl], fake_quantize(x[:, :, sl], "int3", "channel", sym=sym))
    # group >= S is the same as no grouping
    assert torch.equal(
        fake_quantize(x, "int3", "channel", group=64, sym=sym), fake_quantize(x, "int3", "channel", sym=sym)
    )


def test_channel_groups_count_valid_positions_only():
    x = _data()
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, [0, 1, 5]] = False  # holes, not only edge padding
    q = fake_quantize(x, "int4", "channel", group=3, valid=valid)
    idx = valid[0].nonzero().flatten()  # 7 valid positions -> groups of 3, 3, 1
    for chunk in idx.split(3):
        assert torch.equal(q[0][:, chunk], fake_quantize(x[:1, :, chunk], "int4", "channel")[0])
    assert torch.equal(q[0][:, ~valid[0]], x[0][:, ~valid[0]])


def test_tensor_axis_one_scale_per_sample():
    x = _data()
    x[1] *= 100.0
    q = fake_quantize(x, "int8", "tensor")
    assert torch.equal(q[0:1], fake_quantize(x[0:1], "int8", "tensor"))
    assert torch.equal(q[0], fake_quantize(x[0].reshape(1, 1, 1, -1), "int8", "token").reshape(3, 10, 8))


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fmt": "int5", "axis": "token"}, "int5"),
        ({"fmt": "fp4", "axis": "token"}, "fp4"),
        ({"fmt": "int4", "axis": "head"}, "head"),
        ({"fmt": "int4", "axis": "token", "group": 3}, "divisible"),
        ({"fmt": "int4", "axis": "tensor", "group": 4}, "tensor"),
        ({"fmt": "int4", "axis": "channel", "group": 0}, "positive"),
        ({"fmt": "fp8", "axis": "token", "sym": False}, "symmetric"),
        ({"fmt": "int4", "axis": "token", "valid": torch.ones(2, 9, dtype=torch.bool)}, "valid"),
        ({"fmt": "int4", "axis": "token", "protect": torch.ones(2, 8, dtype=torch.bool)}, "protect"),
    ],
)
def test_bad_arguments_raise_one_line_value_error(kwargs, needle):
    with pytest.raises(ValueError) as info:
        fake_quantize(_data(), **kwargs)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_bad_input_tensor_raises():
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        fake_quantize(torch.zeros(3, 10, 8), "int8", "token")
    with pytest.raises(ValueError, match="floating-point"):
        fake_quantize(torch.zeros(1, 1, 2, 2, dtype=torch.int32), "int8", "token")


@pytest.mark.parametrize("sym", [True, False])
def test_one_channel_group_reduces_without_scatter_and_matches_the_grouped_path(sym):
    """`axis=channel` with no group (one group per column) is a masked reduction over S; it gives what the
    scatter/gather path gives with a group as long as the prompt, padding and protected columns included."""
    from qk_ablate.core.quantize import _quantize_channel

    torch.manual_seed(3)
    x = torch.randn(2, 3, 19, 8)
    x[..., 2] *= 30
    valid = torch.ones(2, 19, dtype=torch.bool)
    valid[0, :7] = False
    protect = torch.zeros(2, 3, 8, dtype=torch.bool)
    protect[:, :, 2] = True
    got = fake_quantize(x, "int4", "channel", None, sym, valid, protect)
    mask = valid[:, None, :, None].expand_as(x) & ~protect[:, :, None, :].expand_as(x)
    grouped = torch.where(mask, _quantize_channel(x, "int4", sym, valid, mask, 19), x)
    assert torch.equal(got, grouped)
    assert torch.equal(got[0, :, :7], x[0, :, :7]) and torch.equal(got[..., 2], x[..., 2])
    assert not torch.equal(got, x)
