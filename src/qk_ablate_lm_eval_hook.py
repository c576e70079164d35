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


def _stop() -> None:
    """End lm_eval before it starts, with a non-zero status.

    site.py runs .pth lines inside `except Exception`, so SystemExit passes through it and aborts
    site initialisation: Python then prints "Fatal Python error: init_import_site" and a traceback
    (tried on 3.11). Only imports have run (lm_eval's CLI has not started, nothing is written), so
    leaving at once, skipping their atexit handlers, loses nothing once our line is flushed.
    """
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def _load_plugin(argv: list[str]) -> None:
    """Import the plugin. When that fails, one line names the package that broke it (lm_eval alone
    would go on to a misleading `Tasks not found`), and a command that runs one of our models stops."""
    try:
        import qk_ablate.plugin  # noqa: F401
    except Exception as error:  # never a traceback from a .pth line
        from qk_ablate.startup import failure_line, named_models

        print(f"qk-ablate: error: {failure_line(error)}", file=sys.stderr)
        if named_models(argv):
            _stop()


if _is_lm_eval() and "qk_ablate.plugin" not in sys.modules:
    _load_plugin(sys.argv)
