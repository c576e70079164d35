"""The vLLM engine: `qk_ablated_vllm` (`lm`, in the driver process) and the attachment inside
vLLM's workers (`worker`), over the same core as the HF engine."""
