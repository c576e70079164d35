"""Builders and scorers of qk-ablate's lm-eval tasks (the YAMLs live in the top-level `tasks/`).

* `passkey`: Mohtashami & Jaggi passkey retrieval prompts at exact lengths in the evaluated
  model's tokens (`build_passkey_docs`).
* `city_facts`: city -> country facts from GeoNames (`build_recall_docs`, `build_tf_docs`).
* `scoring`: strict answer checks (`passkey_correct`, `country_correct`).
* `tokens`: token counting and exact-length fitting shared by synthetic long-context builders.
* `hooks`: the `custom_dataset` / `process_results` functions the YAMLs name.
"""

from qk_ablate.task_data.scoring import country_correct, normalize_name, passkey_correct

__all__ = ["country_correct", "normalize_name", "passkey_correct"]
