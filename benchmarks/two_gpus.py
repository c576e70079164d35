"""A model split over two GPUs gives the same answers as on one (not a unit test: prints a table).

Builds (once) a Llama-3.1-8B-shaped random bf16 model with a planted massive rotary pair in every
Q/K head, saves it with a tokenizer, then runs the same lm-eval tasks through `qk_ablated` loaded
on one GPU (`device=cuda:0`) and split over two (`parallelize=True`, layers on both cards), for
the no-op, `ablate=massive` and `quant=int4`, and through plain `hf` on the split model. It
prints, per intervention, whether every response (generations and loglikelihoods) is identical.

    python benchmarks/two_gpus.py --tokenizer .gpu/tokenizer --model-dir /tmp/llama8b --out out/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

INTERVENTIONS = {
    "none": {},
    "ablate=massive": {"ablate": "massive"},
    "quant=int4": {"quant": "int4", "quant_targets": "qk"},
}
MASSIVE_PAIR = 60  # a low-frequency rotary pair, as in real models (dims 60 and 124 of each 128-dim head)


def build(folder: Path, tokenizer: str, layers: int = 32) -> None:
    """A random Llama-3.1-8B-shaped bf16 model (`layers` deep) whose Q/K carry one massive rotary pair per head."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    torch.manual_seed(0)
    with torch.device("cuda:0"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, 32), (layer.self_attn.k_proj, 8)):
                rows = torch.tensor([h * 128 + d for h in range(heads) for d in (MASSIVE_PAIR, MASSIVE_PAIR + 64)])
                proj.weight[rows] *= 25.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def responses(results: dict) -> dict[str, list]:
    """Per task, every document's raw responses, in document order."""
    return {
        task: [row["resps"] for row in sorted(rows, key=lambda r: r["doc_id"])]
        for task, rows in results["samples"].items()
    }


def _differ(got: dict[str, dict[str, list]], check: str) -> str:
    """How many documents of each task differ between the two runs a check compares."""
    pairs = {
        "plain hf run twice (two GPUs): the run-to-run noise": ("hf, two GPUs, again", "hf, two GPUs"),
        "no-op vs plain hf (two GPUs)": ("none, two GPUs", "hf, two GPUs"),
    }
    name = check.split(":")[0].split(" changes")[0]
    a, b = pairs.get(check) or (
        (f"{name}, two GPUs", f"{name}, one GPU") if "vs one" in check else (f"{name}, one GPU", "none, one GPU")
    )
    return ", ".join(
        f"{task} {sum(x != y for x, y in zip(got[a][task], got[b][task]))}/{len(got[a][task])}" for task in got[a]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--tasks", default="passkey_1k,imdb", help="a generation and a loglikelihood task")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quicker check (same layer shapes)")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms (needs CUBLAS_WORKSPACE_CONFIG=:4096:8)",
    )
    args = parser.parse_args()
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401  (our tasks)
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.lm import QKAblatedLM

    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file():
        build(folder, args.tokenizer, args.layers)
    tasks = args.tasks.split(",")
    manager = TaskManager(metadata={"pretrained": str(folder), "imdb_path": "tests/data/imdb_test_200.csv"})
    common = {"pretrained": str(folder), "dtype": args.dtype, "batch_size": 4}
    split = QKAblatedLM(parallelize=True, **common)
    one = QKAblatedLM(device="cuda:0", **common)
    devices = sorted({str(p.device) for p in split.model.parameters()})
    from qk_ablate.core import fused

    print(
        f"torch {torch.__version__} transformers {transformers.__version__} QK_ABLATE_COMPILE={fused.mode()} "
        f"{', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))}; "
        f"{split.model.config.num_hidden_layers} layers split over {devices}; tasks {args.tasks}, {args.limit} documents each, batch 4, {args.dtype}"
    )

    def run(lm) -> dict[str, list]:
        return responses(
            simple_evaluate(model=lm, tasks=tasks, limit=args.limit, task_manager=manager, log_samples=True)
        )

    plain = HFLM(pretrained=split.model, tokenizer=split.tokenizer, batch_size=4)
    got = {"hf, two GPUs": run(plain), "hf, two GPUs, again": run(plain)}
    for name, keys in INTERVENTIONS.items():
        for label, lm in (("one GPU", one), ("two GPUs", split)):
            lm.use(InterventionSpec.from_args(keys))
            got[f"{name}, {label}"] = run(lm)
    rows = [
        ("plain hf run twice (two GPUs): the run-to-run noise", got["hf, two GPUs, again"] == got["hf, two GPUs"]),
        ("no-op vs plain hf (two GPUs)", got["none, two GPUs"] == got["hf, two GPUs"]),
    ]
    rows += [
        (f"{name}: two GPUs vs one", got[f"{name}, two GPUs"] == got[f"{name}, one GPU"]) for name in INTERVENTIONS
    ]
    rows += [
        (f"{name} changes the answers", got[f"{name}, one GPU"] != got["none, one GPU"])
        for name in INTERVENTIONS
        if name != "none"
    ]
    print(f"deterministic algorithms: {args.deterministic}")
    print("| check | identical | documents that differ (generation / loglikelihood task) |\n|---|---|---|")
    for check, ok in rows:
        print(f"| {check} | {ok} | {_differ(got, check)} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_gpus.json").write_text(json.dumps({k: v for k, v in got.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
