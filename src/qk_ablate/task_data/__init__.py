"""Builders and scorers of qk-ablate's lm-eval tasks (the YAMLs live in the top-level `tasks/`).

Contextual (the answer is in the prompt):
* `passkey`: Mohtashami & Jaggi passkey retrieval at exact lengths (`build_passkey_docs`).
* `niah` + `haystack`: RULER-style needle in a haystack, noise or essays (`build_niah_docs`).
* `ctxqa`: RULER-style QA over invented documents (`build_ctxqa_docs`).
* `imdb`: balanced, seeded sample of the IMDB test split; `gsm8k`: local GSM8K for `qk_gsm8k`.

Parametric (the answer is in the weights), all from GeoNames:
* `city_facts` (city -> country), `country_capital`, `country_continent`; their recall forms
  score `acc` and `well_formed` (a real name of the asked kind), and each has a `*_0shot` form
  (the same questions without the 3-shot prefix).

A user's own data, through templates (`include: qk_ablate:<name>`): `user_facts` (facts_csv),
`user_statements` (statements_csv, true/false by likelihood), both read by `user_csv`; and
`niah` in a folder of documents (niah_documents).

Each task module holds its builder and the `!function` hooks its YAMLs name. Shared: `lengths`
(`1k` ... `128k`), `filler` (the "grass is green" filler / noise haystack), `tokens` (token
counting, chat-template frames, exact-length fitting), `settings` (the run-time settings a hook
reads: tokenizer, num_docs, task_seed), `scoring` (strict answer checks); `hooks` only keeps the
old `!function` paths working.
"""

from qk_ablate.task_data.scoring import country_correct, normalize_name, passkey_correct

__all__ = ["country_correct", "normalize_name", "passkey_correct"]
