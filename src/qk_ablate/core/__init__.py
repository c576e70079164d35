"""The intervention core, shared by every engine: which dims (`selection`), what is done to them
(`destroy`, `quantize`), the frozen spec they obey (`vocabulary`, `spec`, `presets`), and the
per-tensor edit (`edits`). Pure tensor code: nothing here imports transformers, vLLM or an engine."""
