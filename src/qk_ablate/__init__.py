"""qk-ablate: destroy or quantize the massive Q/K values of RoPE models inside attention.

Public entry points: `InterventionSpec` (what to do), `attach` (do it to a loaded model),
`tasks_dir` (our lm-eval tasks), and the lm-eval models `qk_ablated` (`qk_ablate.engines.hf.lm`)
and `qk_ablated_vllm` (`qk_ablate.engines.vllm.lm`). Names are imported on first use, so
`import qk_ablate` (and `qk-ablate report` / `gate`) never loads torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from qk_ablate._version import __version__

# public name -> the module that holds it
_FACE = {
    "Attachment": "qk_ablate.engines.hf.attachment",
    "attach": "qk_ablate.engines.hf.attachment",
    "InterventionSpec": "qk_ablate.core.spec",
    "QKAblateError": "qk_ablate.errors",
    "tasks_dir": "qk_ablate.paths",
}

__all__ = ["Attachment", "InterventionSpec", "QKAblateError", "__version__", "attach", "tasks_dir"]

if TYPE_CHECKING:
    from qk_ablate.core.spec import InterventionSpec
    from qk_ablate.engines.hf.attachment import Attachment, attach
    from qk_ablate.errors import QKAblateError
    from qk_ablate.paths import tasks_dir


def __getattr__(name: str) -> Any:
    if name not in _FACE:
        raise AttributeError(f"module 'qk_ablate' has no attribute {name!r}")
    value = getattr(import_module(_FACE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_FACE])
