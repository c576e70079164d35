"""Attachment on tiny random models of every architecture: no-op exactness, what exactly changes,
padding and batch invariance, and the KV-cache semantics of `stage=prefill`."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from conftest import (
    HEAD_DIM,
    KV_HEADS,
    MASSIVE_DIMS,
    NO_POST_ROPE,
    attention_modules,
    build,
    post_span,
    projection_columns,
    prompts,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from qk_ablate import InterventionSpec, QKAblateError, attach
from qk_ablate.core.destroy import fill_values
from qk_ablate.core.selection import column_norms, massive_mask_threshold
from qk_ablate.engines.hf.arch import find_layout


def spec(**kwargs) -> InterventionSpec:
    return InterventionSpec.from_args(kwargs)


@torch.no_grad()
def logits(model, ids, mask=None):
    """Logits; with a padding mask, positions count from each row's first real token (as generate does).

    That matters: destroying single dims of rotary pairs post-RoPE is not shift-invariant.
    """
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.fixture
def record_post(monkeypatch):
    """Call with a model: records (layer, query, key) as its attention kernel receives them."""
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def install(model):
        implementation = model.config._attn_implementation
        if implementation == "eager":
            modeling = sys.modules[type(find_layout(model).sites[0].module).__module__]
            kernel = modeling.eager_attention_forward
        else:
            kernel = ALL_ATTENTION_FUNCTIONS[implementation]

        def recorder(module, query, key, value, attention_mask, **kwargs):
            seen.append((module.layer_idx, query.detach().clone(), key.detach().clone()))
            return kernel(module, query, key, value, attention_mask, **kwargs)

        if implementation == "eager":
            monkeypatch.setattr(modeling, "eager_attention_forward", recorder)
        else:
            monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, implementation, recorder)
        return seen

    return install


def test_noop_is_bit_identical_with_hooks_installed_and_after_removal(rope_arch):
    model = build(rope_arch)
    ids = prompts()
    plain = logits(model, ids)
    implementation = model.config._attn_implementation
    seen = []
    where = ("pre",) if rope_arch in NO_POST_ROPE else ("pre", "post")
    # An observer forces both the pre-RoPE hooks and the post-RoPE attention wrapper to be installed.
    with attach(model, spec(), observer=lambda site, x, p: seen.append(tuple(site)), observe=where):
        assert model.config._attn_implementation.startswith("qk_ablate:") == ("post" in where)
        assert torch.equal(logits(model, ids), plain)
    assert len(seen) == len(where) * 3 * len(find_layout(model).sites)  # q, k, v at pre (and post), per layer
    assert model.config._attn_implementation == implementation
    assert torch.equal(logits(model, ids), plain)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("arch,attn", [("llama", "eager"), ("llama", "sdpa"), ("gemma2", "eager")])
def test_noop_exact_for_each_kernel(arch, attn):
    model = build(arch, attn=attn)  # gemma2 is eager-only, with its own softcapping eager function
    ids = prompts()
    plain = logits(model, ids)
    with attach(model, spec(), observer=lambda *a: None, observe=("post",)):
        assert torch.equal(logits(model, ids), plain)


def test_massive_changes_exactly_the_selected_post_rope_columns(post_arch, record_post):
    model = build(post_arch)
    lo, hi = post_span(model) or (0, HEAD_DIM)
    record_post = record_post(model)
    ids = prompts()
    logits(model, ids)
    base = {layer: (q, k) for layer, q, k in record_post}
    record_post.clear()
    with attach(model, spec(ablate="massive", layers="1")):
        logits(model, ids)
    edited = {layer: (q, k) for layer, q, k in record_post}
    assert torch.equal(edited[0][0], base[0][0]) and torch.equal(edited[0][1], base[0][1])  # layer 0 untouched
    for before, after in zip(base[1], edited[1]):
        columns = torch.zeros(before.shape[:2] + before.shape[3:], dtype=torch.bool)
        columns[..., lo:hi] = massive_mask_threshold(column_norms(before[..., lo:hi]), 5.0)
        assert columns.any(), "the planted massive pair should be found"
        changed = (before != after).any(dim=2)  # [B, H, D]
        assert torch.equal(changed, columns)
        fill = fill_values(before, None, "mean").expand_as(before)
        where = columns[:, :, None, :].expand_as(before)
        torch.testing.assert_close(after[where], fill[where])
        assert torch.equal(after[~where], before[~where])


@pytest.mark.parametrize("fill", ["zero", "tensor_mean"])
def test_fill_values(fill, record_post):
    model = build("llama")
    record_post = record_post(model)
    ids = prompts()
    logits(model, ids)
    before = {layer: k for layer, _, k in record_post}[0]
    record_post.clear()
    with attach(model, spec(ablate="massive", layers="0", targets="k", fill=fill)):
        logits(model, ids)
    after = {layer: k for layer, _, k in record_post}[0]
    columns = massive_mask_threshold(column_norms(before), 5.0)[:, :, None, :].expand_as(before)
    expected = torch.zeros(()) if fill == "zero" else before.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(after[columns], expected.expand_as(before)[columns])


def test_shuffle_fill_moves_each_heads_tokens_and_keeps_every_columns_values(record_post):
    """fill=shuffle: the selected K columns hold the same values (so the same norm), permuted over the
    prompt by one permutation per head shared by its dims; every other entry is unchanged."""
    model = build("llama")
    record_post = record_post(model)
    ids = prompts(length=40)
    logits(model, ids)
    before = {layer: k for layer, _, k in record_post}[0]
    record_post.clear()
    with attach(model, spec(ablate="massive", layers="0", targets="k", fill="shuffle")):
        logits(model, ids)
    after = {layer: k for layer, _, k in record_post}[0]
    columns = massive_mask_threshold(column_norms(before), 5.0)
    assert columns.sum() >= 2
    where = columns[:, :, None, :].expand_as(before)
    assert torch.equal(after[~where], before[~where])
    for b, h in columns.any(dim=-1).nonzero().tolist():
        dims = columns[b, h].nonzero().flatten()
        old, new = before[b, h][:, dims], after[b, h][:, dims]  # [S, d]
        assert not torch.equal(old, new)
        assert torch.equal(old.sort(dim=0).values, new.sort(dim=0).values)  # the same values, moved
        moved = [int((old == row).all(dim=1).nonzero()[0]) for row in new]  # where each token's entries came from
        assert sorted(moved) == list(range(len(moved)))  # one permutation for the head's dims together
    torch.testing.assert_close(column_norms(after), column_norms(before))


def test_shuffle_fill_is_seeded_and_refused_for_generated_tokens():
    from qk_ablate.core.destroy import shuffled_prompt

    x = torch.arange(2 * 3 * 10 * 2, dtype=torch.float32).reshape(2, 3, 10, 2)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False  # left padding stays in place
    heads = torch.arange(3)
    first, again, other = (shuffled_prompt(x, valid, seed, 5, heads) for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first[1, :, :4], x[1, :, :4])
    assert torch.equal(shuffled_prompt(x[1:, :, 4:], None, 0, 5, heads), first[1:, :, 4:])  # padding changes nothing
    assert torch.equal(shuffled_prompt(x[:, 1:], valid, 0, 5, heads[1:]), first[:, 1:])  # a shard permutes as the whole
    with pytest.raises(QKAblateError, match="fill=shuffle permutes the prompt's own tokens.*use stage=prefill"):
        spec(ablate="massive", fill="shuffle", stage="all")


@pytest.mark.parametrize("length", [24, KV_HEADS])  # S == H_kv: a per-head k_norm's layout is ambiguous by shape
def test_massive_pre_rope_changes_exactly_the_selected_projection_columns(rope_arch, length):
    """Q and K of layer 0 change in exactly their selected (head, dim) columns, and nothing else of a fused output."""
    model = build(rope_arch)
    ids = prompts(length=length)
    attn = attention_modules(model)[0]
    span = post_span(model)  # MLA: Q's selection runs over its rotary dims; K (k_pe) is all rotary
    for name in "qk":
        norm = getattr(attn, f"{name}_norm", None) or getattr(attn, f"{name}_layernorm", None)
        proj, cols = projection_columns(model, attn, name)
        module = norm or proj
        outputs = []
        hook = lambda m, a, out, outputs=outputs: outputs.append(out.detach().clone())  # noqa: E731
        for intervention in (spec(), spec(ablate="massive", rope="pre", targets=name, layers="0")):
            with attach(model, intervention):
                handle = module.register_forward_hook(hook)  # after ours, so it sees the edited output
                logits(model, ids)
                handle.remove()
        if outputs[0].ndim == 4:  # per-head norm: Gemma3, Phi, StableLM run it on [B, H, S, D], Qwen3 on [B, S, H, D]
            heads_first = rope_arch in ("gemma3_text", "phi", "stablelm")
            before, after = (o if heads_first else o.transpose(1, 2) for o in outputs)
        else:
            before, after = (o[..., cols].transpose(1, 2) for o in outputs)  # [B, H, S, D]
            rest = torch.ones(outputs[0].shape[-1], dtype=torch.bool)
            rest[cols.flatten()] = False
            assert torch.equal(outputs[0][..., rest], outputs[1][..., rest])
        lo, hi = span if (span and name == "q") else (0, before.shape[-1])
        columns = torch.zeros(before.shape[:2] + before.shape[3:], dtype=torch.bool)
        columns[..., lo:hi] = massive_mask_threshold(column_norms(before[..., lo:hi]), 5.0)
        assert columns.any()
        assert torch.equal((before != after).any(dim=2), columns)


def test_planted_dims_are_the_ones_found():
    model = build("llama")
    seen = {}
    with attach(model, spec(), observer=lambda site, x, p: seen.setdefault(site[:2], x), observe=("post",)):
        logits(model, prompts())
    for name in "qk":
        columns = massive_mask_threshold(column_norms(seen[(0, name)]), 5.0)
        assert columns[..., list(MASSIVE_DIMS)].all()
        assert columns.sum(-1).eq(len(MASSIVE_DIMS)).all()


def left_pad(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


BATCH_CASES = [
    dict(ablate="massive"),
    dict(ablate="nonmassive"),
    dict(ablate="massive", rope="pre"),
    dict(ablate="massive", fill="shuffle"),
    dict(quant="int4", quant_axis="channel", quant_targets="kv", protect="massive"),
]


@pytest.mark.parametrize(
    "arch,args",
    [
        (arch, args)
        for arch in ("qwen2", "gpt_neox", "falcon", "deepseek_v3", "phi", "stablelm")
        for args in BATCH_CASES
        if arch not in NO_POST_ROPE or args.get("rope") == "pre"  # falcon: pre-RoPE only
    ],
)
def test_batch_of_left_padded_prompts_matches_each_alone(arch, args):
    where = "pre" if arch in NO_POST_ROPE else "post"
    model = build(arch)
    long, short = prompts(1, 24, seed=3)[0], prompts(1, 15, seed=4)[0]
    ids, mask = left_pad([long, short])
    masks: list[torch.Tensor] = []

    def observe(site, x, prompt):
        masks.append(massive_mask_threshold(column_norms(x, prompt), 5.0))

    with attach(model, spec(**args), observer=observe, observe=(where,)):
        batched = logits(model, ids, mask)[:, -1]
        batched_masks, masks[:] = list(masks), []
        alone, alone_masks = [], []
        for row in (long, short):
            alone.append(logits(model, row[None], torch.ones(1, len(row), dtype=torch.long))[0, -1])
            alone_masks.append(list(masks))
            masks.clear()
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)[:, -6:]
        generated_alone = [
            model.generate(row[None], max_new_tokens=6, do_sample=False)[0, -6:] for row in (long, short)
        ]
    for i in range(2):
        torch.testing.assert_close(batched[i], alone[i], rtol=1e-4, atol=1e-4)
        assert torch.equal(generated[i], generated_alone[i])
        for in_batch, single in zip(batched_masks, alone_masks[i]):
            assert torch.equal(in_batch[i], single[0])


@pytest.mark.parametrize(
    "change",
    [{"ablate": "massive"}, {"ablate": "massive", "fill": "zero"}, {"quant": "int2", "quant_targets": "qk"}],
    ids=["destroy", "zero", "int2"],
)
@pytest.mark.parametrize(
    "arch,rope",
    [
        (arch, rope)
        for arch in ("llama", "gemma3_text", "gpt_neox", "falcon", "deepseek_v3", "phi", "stablelm")
        for rope in ("post", "pre")
        if not (arch in NO_POST_ROPE and rope == "post")  # falcon refuses post-RoPE (tested in test_architectures)
    ],
)
def test_prefill_stage_with_cache_equals_cache_free_recomputation(arch, rope, change):
    model = build(arch)
    prompt = prompts(1, 20, seed=5)
    intervention = spec(rope=rope, **change)
    with attach(model, intervention) as attachment:
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 20:]
        sequence = prompt[0]
        for _ in range(8):  # no cache: the whole sequence again, only the first 20 positions are prompt
            is_prompt = (torch.arange(len(sequence)) < 20)[None]
            with attachment.positions(is_prompt):
                step = logits(model, sequence[None])[0, -1].argmax()
            sequence = torch.cat([sequence, step[None]])
    assert torch.equal(cached, sequence[20:])
    with torch.no_grad():
        plain = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 20:]
    assert not torch.equal(plain, cached), "the planted massive values should matter for this check to mean anything"


def test_decode_steps_leave_new_queries_and_keys_untouched(record_post):
    model = build("llama")
    record_post = record_post(model)
    prompt = prompts(1, 20, seed=5)
    with attach(model, spec(ablate="massive")):
        model.generate(prompt, max_new_tokens=3, do_sample=False)
    decode = [(layer, q, k) for layer, q, k in record_post if q.shape[2] == 1]
    assert decode
    for _layer, q, k in decode:
        # the new token's planted pair is still massive in value: no fill was applied to it
        assert q[..., list(MASSIVE_DIMS)].abs().mean() > 3 * q.abs().mean()
        prompt_keys, new_key = k[:, :, :20], k[:, :, -1]
        # destroyed prompt keys stayed destroyed in the cache: each massive column is constant over the prompt
        assert torch.allclose(prompt_keys[..., list(MASSIVE_DIMS)].std(dim=2), torch.zeros(()), atol=1e-5)
        assert new_key[..., list(MASSIVE_DIMS)].abs().mean() > 3 * new_key.abs().mean()


def test_stage_all_also_changes_generated_tokens():
    model = build("llama")
    prompt = prompts(1, 20, seed=5)
    outs = {}
    for stage in ("prefill", "all"):
        with attach(model, spec(ablate="massive", stage=stage)):
            outs[stage] = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert not torch.equal(outs["prefill"], outs["all"])


@pytest.mark.parametrize("stage", ["prefill", "all"])
def test_decode_steps_are_quantized_only_with_stage_all(record_post, stage):
    """Each decode step must be seen as one: a step taken for a fresh prompt would be quantized under prefill too."""
    model = build("llama")
    seen = record_post(model)
    with attach(model, spec(quant="int4", quant_targets="qk", stage=stage)):
        model.generate(prompts(1, 20, seed=5), max_new_tokens=3, do_sample=False)
    decode = [(q, k) for _, q, k in seen if q.shape[2] == 1]
    assert decode
    # int4 symmetric, one scale per token and head: at most 15 levels in a head's 32 dims
    levels = max(t[0, h, 0].unique().numel() for q, k in decode for t in (q, k) for h in range(k.shape[1]))
    assert (levels <= 15) == (stage == "all"), levels


def test_control_is_reproducible_from_seed_and_differs_across_seeds():
    model = build("llama")
    ids = prompts()
    runs = {}
    for seed in (0, 0, 1):
        with attach(model, spec(ablate="nonmassive", seed=seed)):
            runs.setdefault(seed, []).append(logits(model, ids))
    assert torch.equal(runs[0][0], runs[0][1])
    assert not torch.equal(runs[0][0], runs[1][0])


def test_layers_out_of_range_is_a_readable_error():
    with pytest.raises(QKAblateError, match="has 2 layers"):
        attach(build("llama"), spec(ablate="massive", layers="0-5"))


def test_non_rope_models_give_statistics_and_refuse_post_rope(non_rope_arch):
    model = build(non_rope_arch)
    ids = prompts()
    seen = {}
    with attach(model, spec(), observer=lambda site, x, p: seen.setdefault(site[:2], x.shape), observe=("pre",)):
        logits(model, ids)
    assert seen[(0, "q")] == (2, 4, 24, HEAD_DIM) and seen[(1, "v")] == (2, 4, 24, HEAD_DIM)
    with pytest.raises(QKAblateError, match="no rotary embedding.*rope=pre"):
        attach(model, spec(ablate="massive"))
    plain = logits(model, ids)
    with attach(model, spec(ablate="massive", rope="pre")):
        assert not torch.equal(logits(model, ids), plain)
    assert torch.equal(logits(model, ids), plain)


@pytest.mark.parametrize(
    "args",
    [dict(ablate="massive"), dict(quant="int4"), dict(ablate="massive", rope="pre")],
    ids=["massive", "int4", "massive-pre"],
)
def test_a_decode_step_the_intervention_leaves_alone_runs_what_plain_runs(args):
    """`stage=prefill`: after the prefill, a decode step runs exactly plain's tensor operators, so on a GPU
    it launches the same kernels; what it adds is Python only (a flag check per layer)."""
    import transformers
    from torch.profiler import ProfilerActivity, profile

    model = build("llama")
    ids = prompts(2, 16)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    step = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)

    def decode_operators(attached: bool) -> dict[str, int]:
        with attach(model, spec(**args)) if attached else contextlib.nullcontext(), torch.no_grad():
            cache = transformers.DynamicCache(config=model.config)
            model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(input_ids=ids[:, :1], attention_mask=step, past_key_values=cache, use_cache=True)
        return {event.key: event.count for event in prof.key_averages() if event.key.startswith("aten::")}

    plain = decode_operators(attached=False)
    assert plain and decode_operators(attached=True) == plain
