"""Start-up hook (run from qk_ablate_lm_eval.pth by every Python process; cheap and idempotent).

lm-eval 0.4.13 has no plugin discovery, so when -- and only when -- the running program is the
`lm_eval` / `lm-eval` CLI, this registers the `qk_ablated` model and our task folder.
"""

import os
import sys


def _is_lm_eval() -> bool:
    argv = getattr(sys, "orig_argv", None) or getattr(sys, "argv", None) or []
    for i, arg in enumerate(argv[:3]):
        if os.path.basename(arg) in ("lm_eval", "lm-eval") or (arg == "-m" and argv[i + 1 : i + 2] == ["lm_eval"]):
            return True
    return False


if _is_lm_eval() and "qk_ablate.plugin" not in sys.modules:
    try:
        import qk_ablate.plugin  # noqa: F401
    except Exception as error:  # never break lm_eval itself
        print(f"qk-ablate: plugin not loaded ({error})", file=sys.stderr)
