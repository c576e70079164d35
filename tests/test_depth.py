"""The depth view: logit lens, tuned lens, gold tokens, the per-layer measurements, the CLI's errors.

Tiny random models only (built from configs, never the Hub); the embedded model only under `slow`.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import _COMMON, build, prompts

from qk_ablate.cli import main
from qk_ablate.errors import QKAblateError
from qk_ablate.probes.depth import (
    Prompt,
    gold_tokens,
    load_prompts,
    measure,
    parse_interventions,
    plot,
    summarize,
    write_json,
)
from qk_ablate.probes.lens import (
    TrainSettings,
    TunedLens,
    collect,
    kl_to_final,
    log_probs,
    readout,
    residuals,
    train_tuned_lens,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: with the CPU shared, a second thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _identity_last_block(model):
    """Zero the last block's writes to the residual (attention out, MLP down): the block is then the identity."""
    last = model.model.layers[-1]
    with torch.no_grad():
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_lens_at_the_last_layer_is_the_models_own_output(arch):
    model = build(arch)
    if arch == "llama":
        _identity_last_block(model)
    ids = prompts(batch=1, length=12)
    stream, logits = residuals(model, ids)
    read = readout(model)
    assert stream.shape == (model.config.num_hidden_layers + 1, 1, 1, model.config.hidden_size)
    torch.testing.assert_close(read(stream[-1]), logits, rtol=0, atol=0)  # the final residual: exactly the output
    tuned = TunedLens(model.config.num_hidden_layers, model.config.hidden_size)
    torch.testing.assert_close(read(tuned.translate(stream)[-1]), logits, rtol=0, atol=0)
    if arch == "llama":  # the last block does nothing, so the residual entering it reads as the output too
        torch.testing.assert_close(read(stream[-2]), logits, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            read(tuned.translate(stream)[-2]), logits, rtol=1e-6, atol=1e-6
        )  # untrained = logit lens


def test_lens_reads_the_model_output_with_an_intervention_attached():
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.attachment import Attachment

    model = _identity_last_block(build("llama"))
    ids = prompts(batch=1, length=16)
    with Attachment(model, InterventionSpec(ablate="massive")):
        stream, logits = residuals(model, ids)
    plain, _ = residuals(model, ids)
    torch.testing.assert_close(readout(model)(stream[-1]), logits, rtol=0, atol=0)
    assert not torch.allclose(stream[-1], plain[-1])  # the destruction did change the forward


def _peaked_model(layers: int = 4):
    """A tiny Llama whose output distributions are far from uniform, so the lenses have something to match."""
    config = transformers.LlamaConfig(**{**_COMMON, "num_hidden_layers": layers})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


def test_tuned_lens_beats_the_logit_lens_at_every_layer_on_held_out_prompts(capsys):
    model = _peaked_model()
    read = readout(model)
    train = collect(model, list(prompts(batch=64, length=32, seed=1)), per_prompt=32)
    held = collect(model, list(prompts(batch=8, length=32, seed=2)), per_prompt=32, seed=1)
    lens = train_tuned_lens(read, train, TrainSettings(steps=120, batch=128, warmup=10))
    logit, tuned = kl_to_final(read, held), kl_to_final(read, held, lens)
    with capsys.disabled():
        print("\nlayer  KL logit lens  KL tuned lens (held-out)")
        for i, (a, b) in enumerate(zip(logit.tolist(), tuned.tolist())):
            print(f"{i:5d}  {a:13.4f}  {b:13.4f}")
    assert (tuned[:-1] < logit[:-1]).all(), (logit, tuned)
    assert logit[-1] == 0 and tuned[-1] == 0  # the last residual is the output under both lenses


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: soft-capped logits
def test_hand_written_kl_gradient_matches_autograd(arch):
    from qk_ablate.probes.lens import _Unembed

    model = build(arch)
    read = readout(model)
    stream, _ = residuals(model, prompts(batch=1, length=10), positions=slice(None))
    normed = read.norm(stream[1, 0]).detach().requires_grad_(True)
    target = log_probs(read, stream[-1, 0]).detach()
    lens_lp = torch.log_softmax(
        read.head(normed).float() if not read.softcap else torch.tanh(read.head(normed) / read.softcap) * read.softcap,
        dim=-1,
    )
    loss = (target.exp() * (target - lens_lp)).sum(-1).mean()
    loss.backward()
    final = target.exp()
    grad, value = _Unembed(read, normed.device, torch.float32).kl_grad(
        normed.detach(), final, -(final * target).sum(-1)
    )
    torch.testing.assert_close(grad, normed.grad, rtol=1e-4, atol=1e-6)
    assert value == pytest.approx(loss.item(), abs=1e-6)


def test_tuned_lens_cache_round_trip_and_refusals(tmp_path):
    lens = TunedLens(3, 8, meta={"model": "tiny"})
    with torch.no_grad():
        lens.weight.normal_()
    path = lens.save(tmp_path / "lens.pt")
    again = TunedLens.load(path, "tiny")
    assert torch.equal(again.weight, lens.weight) and again.meta["model"] == "tiny"
    with pytest.raises(QKAblateError, match="trained on 'tiny'"):
        TunedLens.load(path, "other")
    with pytest.raises(QKAblateError, match="--train-lens"):
        TunedLens.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a lens")
    with pytest.raises(QKAblateError, match="not a tuned lens"):
        TunedLens.load(tmp_path / "junk.pt")


def test_gold_token_is_the_first_visible_token_of_the_answer(smol):
    ids, prompt_len, gold = gold_tokens(smol, "What is the pass key? The pass key is", "62441")
    assert smol.decode(ids[prompt_len:]) == " "  # SmolLM2 writes the space on its own: fed as generated
    assert smol.decode([gold]) == "6"
    ids, prompt_len, gold = gold_tokens(smol, "Q: In which country is the city of Yaoundé?\nA:", "Cameroon")
    assert prompt_len == len(ids) and smol.decode([gold]) == " Cameroon"
    ids, prompt_len, gold = gold_tokens(smol, "The answer is ", "Paris")
    assert prompt_len == len(ids) and smol.decode([gold]).strip() == "Paris"
    with pytest.raises(QKAblateError, match="no visible token"):
        gold_tokens(smol, "A:", "   ")


def test_prompts_are_what_lm_eval_sends(smol):
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401

    manager = TaskManager(metadata={"pretrained": "smollm2-135m"}, include_defaults=False)  # ours only: quicker
    evaluated, spare = load_prompts(["city_facts"], smol, {}, limit=2, extra=1, manager=manager)
    assert [p.doc for p in evaluated] == [0, 1] and [p.doc for p in spare] == [2]
    first = evaluated[0]
    assert first.kind == "parametric" and smol.decode(first.ids).endswith("?\nA:")
    assert smol.decode([first.gold]).strip() == first.target.split()[0]
    with pytest.raises(QKAblateError, match="unknown task 'city_fact'.*city_facts"):
        load_prompts(["city_fact"], smol, {}, limit=1, manager=manager)


def test_measure_summarise_and_write(tmp_path):
    model = build("llama")
    vocab = model.config.vocab_size
    rows = []
    for i, ids in enumerate(prompts(batch=4, length=20, seed=3)):
        kind = "contextual" if i % 2 else "parametric"
        rows.append(Prompt(f"task_{kind}", kind, i, "x", ids, 19 if i == 3 else 20, int(ids[-1])))
    specs = parse_interventions(["ablate=massive"], model)
    tuned = TunedLens(model.config.num_hidden_layers, model.config.hidden_size)
    results = {label: measure(model, rows, spec, {"logit": None, "tuned": tuned}) for label, spec in specs.items()}
    base = results["baseline"]["logit"]
    assert base["rank"].shape == (4, model.config.num_hidden_layers + 1)
    assert (base["rank"] >= 1).all() and (base["rank"] <= vocab).all()
    assert (abs(base["kl"][:, -1]) < 1e-6).all()  # the last layer's readout is the model's output (to float noise)
    assert (results["baseline"]["tuned"]["rank"] == base["rank"]).all()  # an untrained tuned lens is the logit lens
    for row, p in zip(base["rank"], rows):  # against the model's own logits, recomputed
        logits = model(p.ids[None]).logits[0, -1]
        assert row[-1] == int((logits > logits[p.gold]).sum()) + 1
    summary = summarize(rows, results)
    assert summary["logit"]["ablate=massive"]["contextual"]["n"] == 2
    path = write_json(tmp_path / "depth.json", {"model": "tiny"}, rows, results, summary)
    saved = json.loads(path.read_text())
    assert saved["prompts"][3]["forced_tokens"] == [int(rows[3].ids[-1])]
    picture = plot(
        tmp_path / "depth.png", summary, "tiny", {"contextual": ["task_contextual"], "parametric": ["task_parametric"]}
    )
    assert picture.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lens", "sideways"], "--lens 'sideways' is not valid"),
        (["--limit", "many"], "--limit 'many'"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--tasks", " , "], "--tasks must name"),
        (["--intervention", "ablate=everything"], "ablate='everything' is not valid"),
        (["--intervention", "pretrained=other"], "give model keys in --model_args"),
        (["--intervention", "ablate=massive", "--intervention", "ablate=massive"], "given twice"),
        (["--model_args", "pretrained=smollm2-135m,ablate=massive"], "give it with --intervention"),
        (["--model_args", "pretrained=smollm2-135m,colour=blue"], "'colour' is not known"),
        (["--lens", "logit", "--train-lens"], "--train-lens trains the tuned lens"),
        (["--lens", "tuned", "--lens-cache", "/nonexistent/lens.pt"], "no tuned lens at /nonexistent/lens.pt"),
    ],
)
def test_cli_fails_with_one_line_on_a_bad_value(capsys, argv, message):
    assert main(["depth", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qk-ablate: error: ") and message in err[0], err


@pytest.mark.slow
def test_depth_on_the_embedded_model(tmp_path):
    """One city_facts prompt, logit lens: the last layer's rank is the model's own rank of the gold token."""
    assert (
        main(
            [
                "depth",
                "--tasks",
                "city_facts",
                "--limit",
                "2",
                "--lens",
                "logit",
                "--out",
                str(tmp_path),
                "--model_args",
                "pretrained=smollm2-135m,dtype=float32",
                "--intervention",
                "ablate=massive",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "depth.json").read_text())
    assert saved["layers"] == 30 and len(saved["prompts"]) == 2
    for row in saved["prompts"]:
        assert len(row["baseline"]["logit"]["rank"]) == 31
    assert (tmp_path / "depth.png").is_file()
