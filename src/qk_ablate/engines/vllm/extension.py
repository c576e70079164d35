"""The methods the driver calls on vLLM's workers: a vLLM worker extension.

`lm.QKAblatedVLLM` names `QKAblateWorkerExtension` in vLLM's `worker_extension_cls`; every worker
process imports it by that name and vLLM adds it to its worker class's bases, so
`LLM.collective_rpc("qk_ablate_attach", args=(...))` runs the method in every worker (one per
tensor-parallel rank) and returns their answers as a list. Arguments and answers are plain data
(`InterventionSpec.to_wire`, `wire.prompts_to_wire`, `SelectionTally.to_wire`,
`EditCounts.to_wire`), so vLLM's msgpack carries them without pickling any of our objects or
functions (no `VLLM_ALLOW_INSECURE_SERIALIZATION`).

vLLM refuses an extension with an attribute its worker class already has, so every name here
starts with `qk_ablate_`, and the class holds methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from qk_ablate.core.record import SelectionTally
from qk_ablate.core.spec import InterventionSpec
from qk_ablate.engines.vllm import attention_op
from qk_ablate.engines.vllm.sites import find_sites
from qk_ablate.engines.vllm.wire import EditCounts, prompts_from_wire
from qk_ablate.engines.vllm.worker import VllmAttachment


class QKAblateWorkerExtension:
    """Mixed into vLLM's worker class: attaches, feeds and reads this worker's `VllmAttachment`."""

    _qk_ablate_attachment: VllmAttachment | None  # annotation only: vLLM's extension holds methods only
    get_model: Any  # vLLM's worker method: the model this process runs (unwrapped from CUDA graphs)

    def qk_ablate_attach(self, spec_wire: dict[str, Any]) -> dict[str, Any]:
        """Attach the spec (`InterventionSpec.to_wire`), replacing any earlier one.

        Answers `{"layers": n}`, or `{"refused": one line}` when this worker cannot run it (its
        attention backend, say), so the driver raises it as a user error rather than a worker crash.
        """
        self.qk_ablate_detach()
        model: nn.Module = self.get_model()
        attachment = VllmAttachment(model, InterventionSpec.from_wire(spec_wire))
        refused = attachment.refusal()
        if refused is not None:
            return {"refused": refused}
        self._qk_ablate_attachment = attachment.attach()
        return {"layers": len(attachment.sites)}

    def qk_ablate_detach(self) -> None:
        """Remove this worker's attachment, if any, leaving the model as it was."""
        attachment = self._qk_ablate_current()
        if attachment is not None:
            attachment.remove()
            self._qk_ablate_attachment = None

    def qk_ablate_set_prompts(self, prompts_wire: Sequence[Sequence[Any]], once: bool = False) -> None:
        """Register the inputs about to be sent (`wire.prompts_to_wire`; empty: forget them; `once`:
        loglikelihood inputs, tallied as the HF engine runs them)."""
        attachment = self._qk_ablate_current()
        if attachment is not None:
            attachment.register(prompts_from_wire(prompts_wire), once)

    def qk_ablate_tally(self) -> dict[str, dict[str, int]]:
        """What this worker's selection chose, on its own heads (`SelectionTally.to_wire`)."""
        attachment = self._qk_ablate_current()
        return (attachment.tally() if attachment is not None else SelectionTally()).to_wire()

    def qk_ablate_counts(self) -> dict[str, Any]:
        """What this worker's attachment edited (`EditCounts.to_wire`)."""
        attachment = self._qk_ablate_current()
        return (attachment.counts if attachment is not None else EditCounts()).to_wire()

    def qk_ablate_backend(self) -> str:
        """The attention backend vLLM chose in this worker (recorded with the run)."""
        return attention_op.backend_name(find_sites(self.get_model())[0])

    def _qk_ablate_current(self) -> VllmAttachment | None:
        return getattr(self, "_qk_ablate_attachment", None)
