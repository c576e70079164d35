"""Old `!function` paths of our task YAMLs, kept for YAMLs users copied from earlier releases.

Each task's hooks now live with the task (`passkey`, `city_facts`) and the shared fact scorer
in `scoring`; our own YAMLs name those modules directly.
"""

from qk_ablate.task_data.city_facts import (
    city_facts_dataset,
    city_facts_tf_dataset,
    city_facts_tf_gen_process_results,
)
from qk_ablate.task_data.passkey import passkey_dataset, passkey_process_results
from qk_ablate.task_data.scoring import alias_process_results

__all__ = [
    "alias_process_results",
    "city_facts_dataset",
    "city_facts_tf_dataset",
    "city_facts_tf_gen_process_results",
    "passkey_dataset",
    "passkey_process_results",
]
