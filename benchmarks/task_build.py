"""Time to build the exact-length task documents on CPU (not a test: prints figures).

Builds each task's default document set (100 prompts) at the given lengths with the embedded
SmolLM2 tokenizer (or `--tokenizer`), the way `lm_eval` builds them before a run, and prints the
wall time and the token counts reached (every prompt plus its generation budget must lie within
1% below the nominal length).

    .venv/bin/python benchmarks/task_build.py                      # passkey_128k, niah_128k, ...
    .venv/bin/python benchmarks/task_build.py --lengths 32k,128k --tasks passkey,ctxqa
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from qk_ablate.models.embedded import load_tokenizer
from qk_ablate.task_data.ctxqa import DEFAULT_GEN_BUDGET as CTXQA_BUDGET
from qk_ablate.task_data.ctxqa import build_ctxqa_docs
from qk_ablate.task_data.lengths import LENGTHS
from qk_ablate.task_data.niah import DEFAULT_GEN_BUDGET as NIAH_BUDGET
from qk_ablate.task_data.niah import build_niah_docs
from qk_ablate.task_data.passkey import DEFAULT_GEN_BUDGET as PASSKEY_BUDGET
from qk_ablate.task_data.passkey import build_passkey_docs

BUILDERS = {
    "passkey": (build_passkey_docs, PASSKEY_BUDGET),
    "niah": (build_niah_docs, NIAH_BUDGET),
    "niah_multikey": (partial(build_niah_docs, num_distractors=3), NIAH_BUDGET),
    "ctxqa": (build_ctxqa_docs, CTXQA_BUDGET),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="passkey,niah,niah_multikey,ctxqa")
    parser.add_argument("--lengths", default="128k")
    parser.add_argument("--num-docs", type=int, default=100)
    parser.add_argument("--tokenizer", default="smollm2-135m")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    print(f"tokenizer {args.tokenizer}, {args.num_docs} documents per task\n")
    print("| task | build time (s) | prompt + budget, min..max tokens | nominal |")
    print("|---|---:|---|---:|")
    for family in args.tasks.split(","):
        build, budget = BUILDERS[family]
        for name in args.lengths.split(","):
            length = LENGTHS[name]
            start = time.perf_counter()
            docs = build(tokenizer, length, num_docs=args.num_docs)
            elapsed = time.perf_counter() - start
            sizes = [doc["n_tokens"] + budget for doc in docs]
            print(f"| {family}_{name} | {elapsed:.1f} | {min(sizes)}..{max(sizes)} | {length} |", flush=True)


if __name__ == "__main__":
    main()
