"""Architecture coverage beyond test_attach's shared exactness tests: layouts agree with an
independent reading of each modeling file, MLA's rotary geometry, what is refused and how, a
no-op on a model we cannot read, layers split over devices, and the stock lm_eval CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import (
    HEAD_DIM,
    HEADS,
    NON_ROPE_CONFIGS,
    ROPE_CONFIGS,
    VOCAB,
    attention_modules,
    build,
    projection_columns,
    prompts,
)

from qk_ablate import InterventionSpec, QKAblateError, attach
from qk_ablate.core.selection import column_norms, massive_mask_threshold
from qk_ablate.engines.hf.arch import find_layout
from qk_ablate.engines.hf.rope import model_rope_dims

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


def spec(**kwargs) -> InterventionSpec:
    return InterventionSpec.from_args(kwargs)


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", sorted({**ROPE_CONFIGS, **NON_ROPE_CONFIGS}))
def test_layout_reads_the_same_columns_as_the_modeling_file(arch):
    """arch.TensorSource.heads picks, for every (head, dim), the column conftest derives from each modeling file."""
    model = build(arch, plant=False)
    layout = find_layout(model)
    for site, attn in zip(layout.sites, attention_modules(model), strict=True):
        assert site.module is attn
        for name in "qkv":
            proj, columns = projection_columns(model, attn, name)
            source = site.sources[name]
            if source.module is not proj:  # the output of a q_norm/k_norm, taken after the projection
                assert name in "qk" and source.module is (
                    getattr(attn, f"{name}_norm", None) or getattr(attn, f"{name}_layernorm")
                )
                continue
            width = proj.weight.shape[0 if isinstance(proj, torch.nn.Linear) else 1]
            assert torch.equal(source.heads(torch.arange(width)), columns)
            ones = torch.zeros(width)
            source.write(ones, torch.ones(columns.shape))
            assert torch.equal(ones.nonzero().flatten(), columns.flatten().sort().values)


def test_partial_rotary_bands_stop_at_the_rotary_width():
    """Pythia rotates a quarter of each head (rotate-half within it): the rest has no pair and no band."""
    dims = model_rope_dims(build("gpt_neox", plant=False))
    assert dims.pair[:8] == (0, 1, 2, 3, 0, 1, 2, 3)
    assert set(dims.pair[8:]) == {-1} and set(dims.band[8:]) == {"none"}


def test_mla_rotary_geometry_pre_and_post():
    """DeepSeek-V3: [nope 16 | rope 16] heads; rotary pairs interleaved in the projections, rotate-half after RoPE."""
    model = build("deepseek_v3")
    post = model_rope_dims(model, where="post", name="k")
    assert post.pair == (-1,) * 16 + tuple(range(8)) * 2
    pre_q, pre_k = model_rope_dims(model, where="pre", name="q"), model_rope_dims(model, where="pre", name="k")
    assert pre_q.pair == (-1,) * 16 + tuple(i // 2 for i in range(16))
    assert pre_k.pair == tuple(i // 2 for i in range(16))
    # the pair planted at projection dims nope+2, nope+3 (pair 1) is what post-RoPE selection finds: dims 17 and 25
    seen = {}
    observer = lambda site, x, p: seen.setdefault((site.name, site.where), x)  # noqa: E731
    with attach(model, spec(), observer=observer, observe=("pre", "post")):
        logits(model, prompts())
    for name in "qk":
        top = column_norms(seen[(name, "post")]).topk(2).indices.sort(-1).values
        assert (top == torch.tensor([17, 25])).all(), name
    assert seen[("k", "pre")].shape == (2, 1, 24, 16)  # the one shared rotary key head k_pe
    assert seen[("v", "pre")].shape == seen[("v", "post")].shape == (2, HEADS, 24, 24)


def test_mla_control_is_drawn_from_the_rotary_dims_only(monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = build("deepseek_v3")
    kernel, seen = ALL_ATTENTION_FUNCTIONS["sdpa"], []

    def recorder(module, query, key, value, attention_mask, **kwargs):
        seen.append(query.detach().clone())
        return kernel(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", recorder)
    ids = prompts()
    logits(model, ids)
    before = seen[0]
    seen.clear()
    with attach(model, spec(ablate="nonmassive", targets="q", layers="0")):
        logits(model, ids)
    changed = (before != seen[0]).any(dim=2)  # [B, H, D]
    massive = massive_mask_threshold(column_norms(before[..., 16:]), 5.0)
    assert massive.any() and not changed[..., :16].any()
    assert torch.equal(changed[..., 16:].sum(-1), massive.sum(-1)) and not (changed[..., 16:] & massive).any()


def test_mla_value_rebuilt_every_step_stays_edited_in_generation():
    """rope=pre V of MLA comes from kv_b_proj, which reruns on the whole latent cache at each step."""
    model = build("deepseek_v3")
    prompt = prompts(1, 20, seed=5)
    with attach(model, spec(rope="pre", quant="int2", quant_targets="v")) as attachment:
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False)[0, 20:]
        sequence = prompt[0]
        for _ in range(6):
            with attachment.positions((torch.arange(len(sequence)) < 20)[None]):
                sequence = torch.cat([sequence, logits(model, sequence[None])[0, -1].argmax()[None]])
    assert torch.equal(cached, sequence[20:])
    assert not torch.equal(cached, model.generate(prompt, max_new_tokens=6, do_sample=False)[0, 20:])
    with pytest.raises(QKAblateError, match="stage=all with quantization is not supported for deepseek_v3"):
        attach(model, spec(rope="pre", quant="int4", quant_targets="kv", stage="all"))


@pytest.mark.parametrize("arch", ["falcon", "falcon_mq", "falcon_mha"])
def test_falcon_refuses_post_rope_in_one_line_and_leaves_the_model_alone(arch):
    model = build(arch)
    implementation = model.config._attn_implementation
    for kwargs in (dict(args=spec(ablate="massive")), dict(args=spec(), observer=lambda *a: None, observe=("post",))):
        with pytest.raises(QKAblateError, match=r"^falcon computes attention inside its own modules.*use rope=pre"):
            attach(model, kwargs["args"], **{k: v for k, v in kwargs.items() if k != "args"})
    assert model.config._attn_implementation == implementation
    assert not model._forward_pre_hooks and all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )


def test_wrapper_called_on_a_module_that_is_not_attached_refuses_to_run():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, other = build("llama"), build("llama")
    with attach(model, spec(ablate="massive")):
        wrapper = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        q = torch.zeros(1, HEADS, 3, HEAD_DIM)
        with pytest.raises(QKAblateError, match="not one of the attached attention modules.*use rope=pre"):
            wrapper(attention_modules(other)[0], q, q, q, None)
    assert not any(hasattr(m, "qk_ablate_site") for m in model.modules())  # detached: the work is gone too


def test_noop_runs_on_a_model_whose_layout_is_unknown():
    """ablate=none installs nothing, so it needs no layout: BLOOM's fused layout is one qk-ablate does not read."""
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4)
    ).eval()
    ids = prompts()
    plain = logits(model, ids)
    with attach(model, spec()):
        assert torch.equal(logits(model, ids), plain)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(QKAblateError, match="bloom has a fused query_key_value projection"):
        attach(model, spec(ablate="massive", rope="pre"))


# ----------------------------------------------------------------------------- devices
def _to(device: torch.device, obj):
    if isinstance(obj, torch.Tensor):
        return obj.to(device) if obj.device != device else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(device, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(device, v) for k, v in obj.items()}
    return obj


def _split_second_layer_to_meta(model) -> None:
    """Put layer 1 on a second device, as device_map does: its inputs move there, its outputs come back.

    'meta' stands in for a second GPU: it refuses to mix with CPU tensors exactly as cuda:1 refuses
    cuda:0 ones, and it computes shapes only (the outputs brought back are zeros).
    """
    meta, cpu = torch.device("meta"), torch.device("cpu")
    name = next(n for n, m in model.named_modules() if m is attention_modules(model)[1]).rsplit(".", 1)[0]
    layer = model.get_submodule(name).to(meta)
    layer.register_forward_pre_hook(lambda m, args, kwargs: (_to(meta, args), _to(meta, kwargs)), with_kwargs=True)

    def back(obj):
        if isinstance(obj, torch.Tensor):
            return torch.zeros(obj.shape, dtype=obj.dtype, device=cpu)
        return type(obj)(back(o) for o in obj) if isinstance(obj, tuple) else obj

    layer.register_forward_hook(lambda m, args, out: back(out))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "deepseek_v3"])
@pytest.mark.parametrize(
    "args",
    [
        dict(ablate="massive"),
        dict(ablate="nonmassive", rope="pre", stage="all"),
        dict(ablate="nonmassive", control="smallest", fill="tensor_mean"),
        dict(ablate="massive", fill="shuffle"),
        dict(quant="int4", quant_targets="qkv", quant_axis="channel", protect="massive"),
        dict(ablate="massive", quant="int8", quant_targets="q", stage="all", protect="massive"),
    ],
    ids=["massive", "control-pre-all", "smallest", "shuffle", "quant-protect", "all"],
)
def test_every_tensor_the_edits_use_is_on_the_edited_tensors_device(arch, args, monkeypatch):
    """With layer 1 on another device, every tensor handed to the pure functions sits on x's device.

    What this proves without GPUs: masks made by the model pre-hook (from attention_mask or from
    `positions`), kept columns/fills/protect masks of stage=all, control scores and fills all
    follow the layer's device, at prefill and at a decode step. What it does not: numbers on GPUs.
    """
    import qk_ablate.core.edits as edits

    calls: list[tuple[str, torch.device]] = []

    def checked(name, function):
        def wrapper(*args, **kwargs):
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.ndim > 0]
            device = tensors[0].device
            assert all(t.device == device for t in tensors), (name, [t.device for t in tensors])
            calls.append((name, device))
            return function(*args, **kwargs)

        return wrapper

    for name in (
        "statistics",
        "control_mask",
        "fill_from_means",
        "shuffled_prompt",
        "destroy_columns",
        "fake_quantize",
        "edit_new_tokens",
    ):
        monkeypatch.setattr(edits, name, checked(name, getattr(edits, name)))
    model = build(arch)
    _split_second_layer_to_meta(model)
    ids = prompts(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with attach(model, spec(**args)) as attachment, torch.no_grad():
        cache = transformers.DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        step = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        model(input_ids=ids[:, :1], attention_mask=step, past_key_values=cache, use_cache=True)  # a decode step
        with attachment.positions(mask.bool()):
            model(input_ids=ids, use_cache=False)
        tallies = {device.type for _, device in attachment.editor._selected}
    assert {device.type for _, device in calls} == {"cpu", "meta"}
    assert tallies in ({"cpu", "meta"}, set())  # each device counts its own layers' selections: no sum across cards


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (run it on the GPU machine)")
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "stablelm", "gpt_neox", "falcon", "deepseek_v3"])
def test_layers_on_two_gpus_give_what_one_gpu_gives(arch):
    """accelerate's dispatch_model puts layer 1 on cuda:1: logits and generations equal those on cuda:0 alone."""
    from accelerate import dispatch_model

    model = build(arch)
    base = model.base_model_prefix
    device_map = {name: 0 for name, _ in model.named_children() if name != base}  # lm_head may be tied to the embedding
    for name, child in getattr(model, base).named_children():
        count = len(child) if isinstance(child, torch.nn.ModuleList) else 0
        device_map.update({f"{base}.{name}.{i}": i % 2 for i in range(count)} or {f"{base}.{name}": 0})
    split = dispatch_model(build(arch), device_map=device_map)
    single = model.to("cuda:0")
    ids = prompts(2, 24).to("cuda:0")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    for args in (
        dict(ablate="massive"),
        dict(ablate="nonmassive", stage="all"),
        dict(ablate="massive", rope="pre"),
        dict(quant="int4", quant_axis="channel", quant_targets="qk", protect="massive"),
    ):
        if arch == "falcon" and args.get("rope") != "pre":
            continue
        outs = []
        for each in (single, split):
            with attach(each, spec(**args)), torch.no_grad():
                outs.append(
                    (
                        each(input_ids=ids, attention_mask=mask).logits.to("cuda:0"),
                        each.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False).to("cuda:0"),
                    )
                )
        (one, gen_one), (two, gen_two) = outs
        torch.testing.assert_close(one[mask.bool()], two[mask.bool()], rtol=1e-4, atol=1e-4)
        assert torch.equal(gen_one, gen_two), args


# ----------------------------------------------------------------------------- stock lm_eval CLI
def _char_tokenizer():
    """An offline character-level tokenizer: every printable character its own id (3-98), within the tiny vocab."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _samples(folder: Path) -> list[tuple[int, object]]:
    (path,) = folder.rglob("samples_city_facts_tf_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted((row["doc_id"], row["resps"]) for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neox", "falcon", "deepseek_v3", "phi", "stablelm"])
def test_stock_lm_eval_cli_no_op_equals_hf_bit_for_bit(arch, tmp_path):
    """`lm_eval --model qk_ablated ...,ablate=none` gives the very log-likelihoods of `--model hf`."""
    model_dir = tmp_path / arch
    build(arch).save_pretrained(model_dir)
    _char_tokenizer().save_pretrained(model_dir)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }  # one thread each: the two processes run side by side and must sum alike
    runs = {}
    for engine, extra in (("hf", ""), ("qk_ablated", ",ablate=none")):
        command = [
            LM_EVAL,
            "--model",
            engine,
            "--model_args",
            f"pretrained={model_dir},dtype=float32{extra}",
            "--tasks",
            "city_facts_tf",
            "--limit",
            "4",
            "--device",
            "cpu",
            "--batch_size",
            "2",
            "--log_samples",
            "--output_path",
            str(tmp_path / engine),
        ]
        runs[engine] = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for engine, process in runs.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, (engine, stderr[-3000:])
    hf, ours = _samples(tmp_path / "hf"), _samples(tmp_path / "qk_ablated")
    assert len(hf) == 4 and all(len(resps) == 2 for _, resps in hf)  # 4 statements x (True, False)
    assert hf == ours
