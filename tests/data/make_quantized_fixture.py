"""Make tests/data/tiny-llama-{gptq,w8a8}: the tests' tiny Llama quantized by `qk-ablate quantize`.

The main environment cannot run llm-compressor (it pins transformers<=5.17), so the checkpoint
that tests/test_checkpoints.py loads with the main environment's transformers is made here once
and committed (about 250 KB each). Rerun from the repository root after a format change:
    .venv-quant/bin/python tests/data/make_quantized_fixture.py
"""

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build, word_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
with tempfile.TemporaryDirectory() as tmp:
    source, text = Path(tmp) / "tiny-llama", Path(tmp) / "calibration.txt"
    build("llama").save_pretrained(source)
    word_tokenizer().save_pretrained(source)
    rng = random.Random(0)
    text.write_text(
        "\n\n".join(" ".join(f"w{rng.randrange(120)}" for _ in range(64)) for _ in range(64)), encoding="utf-8"
    )
    for method in ("gptq", "w8a8"):
        shutil.rmtree(HERE / f"tiny-llama-{method}", ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "qk_ablate.cli",
                "quantize",
                "--model",
                str(source),
                "--method",
                method,
                "--out",
                str(Path(tmp) / "out"),
                "--calibration",
                str(text),
                "--samples",
                "8",
                "--seq-len",
                "64",
            ],
            check=True,
        )
        shutil.copytree(Path(tmp) / "out" / f"tiny-llama-{method}", HERE / f"tiny-llama-{method}")
