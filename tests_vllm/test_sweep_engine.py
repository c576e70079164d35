"""`engine: vllm` in a sweep config runs the same grid through qk_ablated_vllm; report reads the cells."""

from __future__ import annotations

import json

import yaml
from conftest import MEMORY


def test_a_sweep_on_the_vllm_engine(tmp_path, capsys):
    from qk_ablate.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "vllm",
                "output": str(tmp_path / "runs"),
                "engine": "vllm",
                "models": [
                    {
                        "pretrained": "smollm2-135m",
                        "dtype": "float32",
                        "max_model_len": 2048,
                        "gpu_memory_utilization": MEMORY,
                        "enforce_eager": True,  # compiling costs minutes on a CPU; compiled runs: test_compiled.py
                    }
                ],
                "interventions": {"baseline": {}, "massive": {"ablate": "massive"}},
                "tasks": ["passkey_1k"],
                "limit": 6,
                "batch_size": 4,
            }
        )
    )
    assert main(["sweep", str(config), "--iterations", "200"]) == 0
    out = capsys.readouterr().out
    assert "| smollm2-135m (vllm) | baseline | 100.0 |" in out and "| smollm2-135m (vllm) | ablate=massive |" in out
    recorded = json.loads(next((tmp_path / "runs" / "smollm2-135m" / "massive").rglob("results_*.json")).read_text())
    assert (
        recorded["config"]["qk_ablate"]["engine"] == "vllm" and recorded["config"]["qk_ablate"]["ablate"] == "massive"
    )
    marker = json.loads((tmp_path / "runs" / "smollm2-135m" / "massive" / "cell.json").read_text())
    assert marker["settings"]["engine"] == "vllm"
