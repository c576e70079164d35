"""The Hugging Face engine: finds Q/K/V in a transformers model (`arch`, `rope`), attaches the core
through projection hooks (`pre_rope`) and the AttentionInterface (`post_rope`), and serves
lm-eval as `qk_ablated` (`lm`)."""
