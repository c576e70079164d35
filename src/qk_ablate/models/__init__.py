"""Models for our commands: the embedded SmolLM2 GGUF, one loader with one-line errors, and
quantized checkpoints (`qk-ablate quantize`)."""
