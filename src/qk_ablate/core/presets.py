"""`preset=jin2025`: the authors' released code (MingyuJ666/Rope_with_LLM), one argument away.

Their code differs per model family from the paper's text (Definition 1, `select=threshold,
lam=5`): it takes a fixed number of dims per head by the column's norm over the prompt, post-RoPE,
prefill only, all layers, Q per query head and K per KV head, and fills them

* Llama and Mistral (`modeling_llama.py`, as their README shows it): the top 1, with the column's
  own mean over the prompt (`fill=mean`; with one dim per head that is also the shared mean);
* Qwen2 (`modeling_qwen2.py`): the top 3, all three with ONE scalar per head, the average of the
  three column means (`fill=shared_mean`). The stored copy of that file computes this scalar but
  writes 0 in its massive branch (the scalar is used by its non-massive branch): add `fill=zero`
  to reproduce that copy literally; for K post-RoPE both give the same attention (a per-prompt
  constant column only shifts every score of a query), for Q they differ;
* Gemma2: the top 22, filled with zero.

Their non-massive branch takes the k *smallest*-norm dims, i.e. `control=smallest`.
"""

from __future__ import annotations

from typing import Any

from qk_ablate.errors import QKAblateError

_COMMON: dict[str, Any] = {
    "ablate": "massive",
    "select": "topk",
    "norm_dtype": "native",
    "control": "smallest",
    "rope": "post",
    "stage": "prefill",
    "targets": "qk",
    "layers": "all",
}

# rule name -> (model types it covers, its own values)
JIN2025: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "llama": (("llama", "mistral"), {"topk": 1, "fill": "mean"}),
    "qwen2": (("qwen2",), {"topk": 3, "fill": "shared_mean"}),
    "gemma2": (("gemma2",), {"topk": 22, "fill": "zero"}),
}


def preset_values(preset: str, model_type: str) -> tuple[str, dict[str, Any]]:
    """(the rule's name, the spec values it sets) of `preset` for a model of `model_type`."""
    if preset != "jin2025":
        raise QKAblateError(f"preset={preset!r} is not valid; choose jin2025")
    for rule, (types, values) in JIN2025.items():
        if model_type in types:
            return rule, {**_COMMON, **values}
    covered = ", ".join(t for types, _ in JIN2025.values() for t in types)
    raise QKAblateError(
        f"preset=jin2025: the authors' code covers {covered}, not {model_type or 'this model'}; "
        "choose the dims yourself, e.g. select=topk,topk=1"
    )
