"""qk-ablate: destroy or quantize the massive Q/K values of RoPE models inside attention.

Public entry points: `InterventionSpec` (what to do), `attach` (do it to a loaded model),
`tasks_dir` (our lm-eval tasks), and the lm-eval model `qk_ablated` (`qk_ablate.lm`).
"""

__version__ = "0.1.0"

from qk_ablate.attachment import Attachment, attach  # noqa: E402
from qk_ablate.errors import QKAblateError  # noqa: E402
from qk_ablate.paths import tasks_dir  # noqa: E402
from qk_ablate.spec import InterventionSpec  # noqa: E402

__all__ = ["Attachment", "InterventionSpec", "QKAblateError", "__version__", "attach", "tasks_dir"]
