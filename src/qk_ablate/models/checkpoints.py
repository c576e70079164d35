"""Real quantized checkpoints (`qk-ablate quantize`): llm-compressor recipes, a fixed calibration set.

The paper's second claim is about real quantizers: methods that take care of activation outliers
(AWQ, SmoothQuant) keep contextual knowledge, one that does not (GPTQ) loses more of it. Each
method here writes an ordinary compressed-tensors folder that `pretrained=<folder>` loads, so the
checkpoints go through the same tasks, report and gate as any model. The 4-bit methods share one
weight format (symmetric int4, one scale per group of `group` input columns) so that the method
is the only difference between them; `w8a8` is SmoothQuant's control (the same W8A8 format
without the smoothing).

llm-compressor pins transformers<=5.17, so it lives in an environment of its own
(`bash scripts/setup.sh --quant` builds .venv-quant); loading the checkpoints needs only
`compressed-tensors` (the `quantized` extra, in the main environment).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from qk_ablate.errors import QKAblateError
from qk_ablate.models.loading import safetensors_header

METHODS: dict[str, str] = {
    "rtn": "round-to-nearest W4A16, no calibration (the naive reference)",
    "gptq": "GPTQ W4A16 (second-order weight rounding, ignores activation outliers)",
    "awq": "AWQ W4A16 (activation-aware channel scaling, duo_scaling=both, then the same int4 rounding as rtn)",
    "smoothquant": "SmoothQuant (strength 0.8) + W8A8 (int8 weights per channel, int8 activations per token, dynamic)",
    "w8a8": "W8A8 round-to-nearest without smoothing (SmoothQuant's control)",
}
FOUR_BIT = ("rtn", "gptq", "awq")
CALIBRATION = (
    "gsm8k_test.jsonl"  # packaged; GSM8K is not in qk_knowledge, so the grid never scores its own calibration text
)
INFO = "qk_ablate_quantize.json"


@dataclass(frozen=True)
class Calibration:
    """Which text, how much of it, in what order: everything needed to redo the sample."""

    source: str
    samples: int = 128
    seq_len: int = 512
    seed: int = 0

    def texts(self) -> list[str]:
        """The source's documents in the seeded order (jsonl `text` or GSM8K `question`+`answer`, or plain text)."""
        path = _calibration_path(self.source)
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            docs = []
            for number, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = row.get("text") or "\n".join(str(row[k]) for k in ("question", "answer") if k in row)
                if not text:
                    raise QKAblateError(
                        f"calibration file '{path}', line {number}: give a 'text' field (or GSM8K's question/answer)"
                    )
                docs.append(text)
        else:
            docs = [part for part in raw.split("\n\n") if part.strip()]
        random.Random(self.seed).shuffle(docs)
        return docs

    def describe(self) -> dict[str, Any]:
        path = _calibration_path(self.source)
        return {
            "source": self.source,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "samples": self.samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "how": "documents shuffled with the seed, joined by blank lines, tokenized and cut into samples x seq_len tokens",
        }


def _calibration_path(source: str) -> Path:
    if source == "gsm8k":
        return Path(str(resources.files("qk_ablate.task_data") / CALIBRATION))
    path = Path(source)
    if not path.is_file():
        raise QKAblateError(
            f"calibration '{source}' is neither 'gsm8k' nor a file; give a .jsonl (field text) or a .txt file"
        )
    return path


def calibration_dataset(calibration: Calibration, tokenizer: Any) -> Any:
    """`samples` windows of exactly `seq_len` tokens, cut from the seeded stream of documents."""
    from datasets import Dataset

    ids = tokenizer("\n\n".join(calibration.texts()), add_special_tokens=False)["input_ids"]
    need = calibration.samples * calibration.seq_len
    if len(ids) < need:
        raise QKAblateError(
            f"calibration '{calibration.source}' has {len(ids)} tokens; {calibration.samples} samples of "
            f"{calibration.seq_len} need {need}: lower --samples or --seq-len, or give more text"
        )
    windows = [ids[i * calibration.seq_len : (i + 1) * calibration.seq_len] for i in range(calibration.samples)]
    return Dataset.from_dict(
        {"input_ids": windows, "attention_mask": [[1] * calibration.seq_len] * calibration.samples}
    )


def pick_group(model: Any, group: str | int) -> int:
    """The int4 group size: `group`, or (auto) the largest of 128/64/32 dividing every quantized Linear's inputs."""
    from torch import nn

    widths = {
        m.in_features for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("lm_head")
    }
    if str(group) != "auto":
        size = int(group)
        bad = sorted(w for w in widths if w % size)
        if bad:
            raise QKAblateError(f"--group {size} does not divide a layer's {bad[0]} input columns; use --group auto")
        return size
    for size in (128, 64, 32):
        if all(w % size == 0 for w in widths):
            return size
    raise QKAblateError(f"no group size of 128, 64 or 32 divides every layer's inputs ({sorted(widths)}); give --group")


def recipe(method: str, group: int, grid: int = 20) -> list[Any]:
    """The llm-compressor modifiers of one method (lm_head stays in full precision, as is usual)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    int4 = {
        "group_0": QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group),
        )
    }
    if method == "rtn":
        return [QuantizationModifier(config_groups=int4, ignore=["lm_head"])]
    if method == "gptq":
        return [GPTQModifier(config_groups=int4, ignore=["lm_head"])]
    if method == "awq":
        return [
            AWQModifier(duo_scaling="both", n_grid=grid),
            QuantizationModifier(config_groups=int4, ignore=["lm_head"]),
        ]
    if method == "smoothquant":
        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
        ]
    if method == "w8a8":
        return [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    raise QKAblateError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def quantize(
    model_name: str,
    method: str,
    out: str | Path,
    calibration: Calibration,
    group: str | int = "auto",
    grid: int = 20,
    log: Callable[[str], None] = print,
) -> Path:
    """Quantize `model_name` with `method` into `out` (a `pretrained=` folder with the recipe and our record beside it)."""
    if method not in METHODS:
        raise QKAblateError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        raise QKAblateError(
            "qk-ablate quantize needs llm-compressor, which pins transformers<=5.17: run "
            "`bash scripts/setup.sh --quant` and use .venv-quant/bin/qk-ablate quantize "
            "(or pip install 'qk-ablate[quantize]' in an environment of its own)"
        ) from None
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _source_folder(model_name)
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise QKAblateError(f"'{target}' exists and is not empty; remove it or choose another --out")
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    size = pick_group(model, group)
    dataset = calibration_dataset(calibration, tokenizer) if method not in ("rtn", "w8a8") else None
    log(
        f"quantize: {model_name} with {method} ({METHODS[method]})"
        + (f", int4 group {size}" if method in FOUR_BIT else "")
    )
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with _no_pinning_without_accelerator():  # our order is already seeded: llm-compressor's own shuffle is not
        oneshot(
            model=model,
            tokenizer=tokenizer,
            recipe=recipe(method, size, grid),
            dataset=dataset,
            num_calibration_samples=calibration.samples,
            max_seq_length=calibration.seq_len,
            shuffle_calibration_samples=False,
        )
    model.save_pretrained(partial, save_compressed=True)
    tokenizer.save_pretrained(partial)
    record = {
        "model": model_name,
        "source_folder": str(source),
        "method": method,
        "description": METHODS[method],
        "group_size": size if method in FOUR_BIT else None,
        "awq_grid": grid if method == "awq" else None,
        "calibration": calibration.describe() if dataset is not None else None,
        "seconds": round(time.time() - started, 1),
        "versions": _versions(),
    }
    (partial / INFO).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial.rename(target)  # only a finished checkpoint gets the real name
    log(f"wrote {target}: {describe_folder(target)}")
    return target


@contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its cached activations (`Tensor.pin_memory()`) to speed up
    host-to-GPU copies; on a host without an accelerator that raises. Pinning changes no value, so
    there it is skipped for the duration of the call."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _source_folder(model_name: str) -> Path:
    """A Hugging Face folder of the model (the embedded GGUF is converted to float32 once)."""
    from qk_ablate.models.embedded import EMBEDDED_NAME, hf_folder

    if model_name == EMBEDDED_NAME:
        return Path(hf_folder())
    if not (Path(model_name) / "config.json").is_file():
        raise QKAblateError(
            f"'{model_name}' is not a local model folder with a config.json (the quantizer runs offline)"
        )
    return Path(model_name)


def _versions() -> dict[str, str]:
    names = ("llmcompressor", "compressed-tensors", "transformers", "torch", "qk-ablate")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def stored_formats(folder: str | Path) -> dict[str, int]:
    """Bytes per stored dtype over the folder's safetensors files, read from their headers (no tensors loaded).

    This is how a user sees that the weights really are quantized: packed int32 (4-bit) or int8
    weights, not a float copy with a config flag.
    """
    totals: dict[str, int] = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise QKAblateError(f"'{folder}' holds no .safetensors file; is it a saved checkpoint folder?")
    for file in files:
        try:
            _, header = safetensors_header(file)
        except ValueError as problem:
            raise QKAblateError(f"'{file}' {problem}") from None
        for name, entry in header.items():
            if name != "__metadata__":
                start, end = entry["data_offsets"]
                totals[entry["dtype"]] = totals.get(entry["dtype"], 0) + end - start
    return totals


def describe_folder(folder: str | Path) -> str:
    """One line: size on disk and bytes per stored dtype, e.g. '110.3 MB (F32 58%, I32 40%, ...)'."""
    formats = stored_formats(folder)
    total = sum(formats.values())
    parts = ", ".join(
        f"{dtype} {100 * size / total:.0f}%" for dtype, size in sorted(formats.items(), key=lambda kv: -kv[1])
    )
    return f"{size_on_disk(folder) / 1e6:.1f} MB on disk ({parts} of tensor bytes)"


def size_on_disk(folder: str | Path) -> int:
    """Bytes of the files in a checkpoint folder (weights, config, tokenizer, recipe)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
