"""The engines that carry the core into a model: `hf` (transformers, lm-eval's HFLM) and `vllm`
(lm-eval's VLLM). Each is a subpackage; neither imports the other."""
