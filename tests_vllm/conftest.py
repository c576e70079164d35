"""Tests of the vLLM engine: they run in the vLLM environment (`bash scripts/setup.sh --vllm`).

vLLM on a CPU reserves its KV cache up front; 1 GiB (and half the memory of a NUMA node for the
engine) leaves room for the HF model that the equivalence tests load beside it.
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
