"""The vLLM engine: `qk_ablated_vllm` (`lm`, in the driver process) and, inside vLLM's workers, the
worker extension (`extension`) that attaches the same core (`worker`, `packing`, `sites`); the two
sides exchange plain data only (`wire`). README.md in this folder walks through it."""
