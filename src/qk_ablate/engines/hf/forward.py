"""What the HF engine's hooks share during one forward: the attached editor and the step now running.

The attachment's model pre-hook sets `step` once per forward; the projection hooks (`pre_rope`) and
the attention wrapper (`post_rope`) hand it to the editor with every tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qk_ablate.core.edits import Editor
from qk_ablate.core.step import PREFILL, Step


@dataclass
class Forward:
    """The editor of one attachment and the step of the forward it is in."""

    editor: Editor
    step: Step = field(default_factory=lambda: PREFILL)
