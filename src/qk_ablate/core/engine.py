"""The engine contract: what every engine provides, so that sweeps, the CLI and the run record
treat them alike. An engine is a subpackage of `qk_ablate.engines` with

- an attachment (`EngineAttachment`): the spec installed in a loaded model, driving one `Editor`
  (`core.edits`) on `[B, H, S, D]` views of that model's Q/K/V, with `attach`, `remove` and
  `tally`; the HF engine's `engines.hf.attachment.Attachment`, the vLLM engine's
  `engines.vllm.worker.VllmAttachment` (inside each vLLM worker);
- an lm-eval model (`EngineModel`) that parses model_args into an `InterventionSpec`, can swap
  specs without reloading (`use`), and writes the run record (`core.record.run_record`) in
  `get_model_info`;
- an entry in the registry, `qk_ablate.engines.ENGINES`.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

from qk_ablate.core.edits import Editor
from qk_ablate.core.record import SelectionTally
from qk_ablate.core.spec import InterventionSpec

A = TypeVar("A", bound="EngineAttachment")


@runtime_checkable
class EngineAttachment(Protocol):
    """An intervention installed in one loaded model (or one worker's share of it)."""

    spec: InterventionSpec
    editor: Editor

    def attach(self: A) -> A:
        """Install the hooks (idempotent); returns the attachment."""
        ...

    def remove(self) -> None:
        """Remove every hook, leaving the model exactly as it was."""
        ...

    def tally(self) -> SelectionTally:
        """What the selection chose so far (read after the run: it may read device counters)."""
        ...


@runtime_checkable
class EngineModel(Protocol):
    """An engine's lm-eval model."""

    spec: InterventionSpec

    def use(self, spec: InterventionSpec) -> None:
        """Swap the intervention without reloading the model (sweeps run several on one load)."""
        ...

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval's model info with the run record (`core.record.run_record`) in it."""
        ...
