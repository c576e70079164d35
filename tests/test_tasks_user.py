"""A user's own data as tasks without Python: `include: qk_ablate:facts_csv`,
`include: qk_ablate:statements_csv` and `include: qk_ablate:niah_documents` (their documents,
seeded few-shot prefixes, one-line errors and declared kinds); the essay haystack of
niah_essay_{len}; country_continent."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import docs_digest, token_count

import qk_ablate.plugin  # noqa: F401  (the include resolver)
from qk_ablate.errors import QKAblateError
from qk_ablate.task_data import country_continent as continent
from qk_ablate.task_data import haystack, user_facts, user_statements
from qk_ablate.task_data.city_facts import NON_SOVEREIGN
from qk_ablate.task_data.niah import build_niah_docs
from qk_ablate.task_data.scoring import alias_process_results

FACTS = """question,answer,aliases
What is the capital of France?,Paris,
What is the chemical symbol of gold?,Au,
Who wrote Hamlet?,William Shakespeare,Shakespeare
What is the largest planet?,Jupiter,
In which country is Kyoto?,Japan,
"""


def _manager(folder: Path, **metadata):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(folder), include_defaults=False, metadata={"pretrained": "smollm2-135m", **metadata}
    )


def _write(folder: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _one_line_error(call, match: str) -> None:
    with pytest.raises(QKAblateError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)


def _facts_task(folder: Path, **metadata):
    csv_path = _write(folder, FACTS, "facts.csv")
    (folder / "my_facts.yaml").write_text(
        f"include: qk_ablate:facts_csv\ntask: my_facts\ndataset_kwargs:\n  facts_csv: {csv_path}\n  facts_fewshot: 2\n"
    )
    return _manager(folder, **metadata).load(["my_facts"])["tasks"]["my_facts"]


def test_facts_csv_template(tmp_path):
    task = _facts_task(tmp_path)
    docs = list(task.test_docs())
    # task_seed 0 draws rows 4 and 3 (not the first two); the others stay, in file order
    assert [d["answer"] for d in docs] == ["Paris", "Au", "William Shakespeare"]
    assert [d["row"] for d in docs] == [0, 1, 2]
    assert docs[2]["input"] == (
        "Q: In which country is Kyoto?\nA: Japan\n\nQ: What is the largest planet?\nA: Jupiter\n\n"
        "Q: Who wrote Hamlet?\nA:"
    )
    assert task.config.metadata["kind"] == "parametric"
    score = lambda out: alias_process_results(docs[2], [out])["acc"]  # noqa: E731
    assert score(" Shakespeare.") == score(" William Shakespeare") == 1.0
    assert score(" Not Shakespeare") == score(" Marlowe") == 0.0


# The paper's city data as it comes (Geometry of Truth's cities.csv): statements, each city twice.
CITIES = """statement,label,city,country,correct_country
The city of Kyoto is in Japan.,1,Kyoto,Japan,Japan
The city of Kyoto is in Chile.,0,Kyoto,Chile,Japan
The city of Lyon is in France.,1,Lyon,France,France
The city of Lyon is in Peru.,0,Lyon,Peru,France
The city of Porto is in Spain.,0,Porto,Spain,Portugal
The city of Porto is in Portugal.,1,Porto,Portugal,Portugal
The city of Cusco is in Peru.,1,Cusco,Peru,Peru
"""


def test_a_statement_form_csv_runs_with_a_question_template_and_an_answer_column(tmp_path):
    csv_path = _write(tmp_path, CITIES, "cities.csv")
    (tmp_path / "my_cities.yaml").write_text(
        "include: qk_ablate:facts_csv\ntask: my_cities\ndataset_kwargs:\n"
        f"  facts_csv: {csv_path}\n  facts_fewshot: 1\n"
        '  facts_question: "In which country is {city}?"\n  facts_answer: correct_country\n'
    )
    task = _manager(tmp_path).load(["my_cities"])["tasks"]["my_cities"]
    docs = list(task.test_docs())
    assert len(docs) == 3  # four cities, each read once although the file states each twice; one is the prefix
    asked = {doc["question"]: doc["answer"] for doc in docs}
    assert len(asked) == 3 and set(asked.items()) < {
        ("In which country is Kyoto?", "Japan"),
        ("In which country is Lyon?", "France"),
        ("In which country is Porto?", "Portugal"),
        ("In which country is Cusco?", "Peru"),
    }
    assert all(doc["input"].endswith(f"Q: {doc['question']}\nA:") for doc in docs)
    assert task.process_results(docs[0], [f" {docs[0]['answer']}."])["acc"] == 1.0


def test_facts_csv_prefix_is_a_seeded_draw(tmp_path):
    rows = user_facts.load_facts(_write(tmp_path, FACTS))
    prefixes = {}
    for seed in range(4):
        docs = user_facts.build_docs(rows, 2, seed)
        assert docs == user_facts.build_docs(rows, 2, seed)
        assert [d["row"] for d in docs] == sorted(d["row"] for d in docs)  # file order
        prefixes[seed] = docs[0]["input"].rsplit("Q: ", 1)[0]
        assert prefixes[seed].count("Q: ") == 2 and len(docs) == 3
    assert len(set(prefixes.values())) == 4
    # task_seed reaches the draw through lm-eval's run metadata
    docs = list(_facts_task(tmp_path, task_seed=2).test_docs())
    assert docs[0]["input"].rsplit("Q: ", 1)[0] == prefixes[2]


def test_documents_template(tmp_path, essay_dir, smol):
    (tmp_path / "mine.yaml").write_text(
        f"include: qk_ablate:niah_documents\ntask: niah_mine_2k\ndataset_kwargs:\n"
        f"  niah_length: 2048\n  niah_essay_dir: {essay_dir}\n"
    )
    task = _manager(tmp_path, num_docs=3).load(["niah_mine_2k"])["tasks"]["niah_mine_2k"]
    docs = list(task.test_docs())
    assert len(docs) == 3
    first_words = " ".join((essay_dir / "essay_000.txt").read_text().split()[:8])
    for doc in docs:
        assert first_words in doc["input"]  # the haystack is the user's documents
        assert 0.99 * 2048 <= token_count(smol, doc["input"]) + 12 <= 2048
    assert task.config.generation_kwargs["max_gen_toks"] == 12
    # lm-eval replaces an included `metadata` whole: niah_documents repeats the niah template's keys
    from lm_eval.tasks._yaml_loader import load_yaml

    from qk_ablate.paths import tasks_dir

    niah = load_yaml(Path(tasks_dir()) / "niah" / "_niah_template_yaml", resolve_func=False)["metadata"]
    documents = load_yaml(Path(tasks_dir()) / "templates" / "niah_documents", resolve_func=False)["metadata"]
    assert documents == {**niah, "kind": "contextual", "chance": 0.0} and task.config.metadata["kind"] == "contextual"


def test_unknown_template_is_a_readable_error(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("include: qk_ablate:nope\ntask: bad_one\n")
    with pytest.raises(KeyError, match="bad_one"):  # lm-eval's index skips the file...
        _manager(tmp_path).load(["bad_one"])
    # ... so the reason is printed as it is skipped
    assert (
        "qk-ablate: error: unknown task template 'qk_ablate:nope'; qk-ablate ships qk_ablate:facts_csv, "
        "qk_ablate:niah_documents, qk_ablate:statements_csv"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "options", "match"),
    [
        (None, {}, r"facts_csv '.*missing.csv' does not exist"),
        (
            "q,a\nx,y\n",
            {},
            r"has no column 'question', 'answer' \(its first line reads \['q', 'a'\]: is its header line missing\?\); "
            "expected a CSV with columns",
        ),
        ("", {}, r"facts_csv '.*' is empty \(no header line\); expected a CSV with columns"),
        ("\n\n", {}, r"is empty \(no header line\)"),
        ("Paris,France\nLima,Peru\n", {}, r"its first line reads \['Paris', 'France'\]: is its header line missing"),
        ("question,answer\nx,y\n,z\n", {}, "empty question or answer on line 3"),
        (b"question,answer\n\xff\xfe,x\n", {}, "is not UTF-8 text"),
        ("question,answer\n", {}, "has no rows below its header"),
        (FACTS, {"facts_fewshot": 5}, "facts_fewshot is 5 but the CSV has 5 rows; it needs more rows than few-shot"),
        (FACTS, {"facts_fewshot": "three"}, "facts_fewshot must be a whole number of at least 0, got 'three'"),
        (FACTS, {"facts_fewshot": -1}, "facts_fewshot must be a whole number"),
        (
            CITIES,
            {"facts_question": "In which country is {town}?", "facts_answer": "correct_country"},
            "no column 'town'",
        ),
        (CITIES, {"facts_question": "In which country is {city}?", "facts_answer": "nation"}, "no column 'nation'"),
        (CITIES, {"facts_question": "In which country?", "facts_answer": "correct_country"}, "names no column"),
        (CITIES, {"facts_question": "Where is {}?", "facts_answer": "country"}, "is not a valid template"),
        (CITIES, {"facts_question": "Where is {city", "facts_answer": "country"}, "is not a valid template"),
    ],
)
def test_bad_facts_csv(tmp_path, content, options, match):
    path = tmp_path / "missing.csv" if content is None else _write(tmp_path, content)
    _one_line_error(lambda: user_facts.facts_dataset(facts_csv=str(path), **options), match)


STATEMENTS = """statement,label
Paris is the capital of France.,true
The Sun orbits the Earth.,false
Water is made of hydrogen and oxygen.,Yes
Tokyo is in Brazil.,no
Gold is a metal.,1
Spiders have six legs.,0
Rome is in Italy.,TRUE
The Moon is larger than the Earth.,False
Mount Everest is in Asia.,true
Penguins live at the North Pole.,false
"""


def _statements_task(folder: Path, name: str = "my_statements", extra: str = "", **metadata):
    csv_path = _write(folder, STATEMENTS, "statements.csv")
    (folder / f"{name}.yaml").write_text(
        f"include: qk_ablate:statements_csv\ntask: {name}\ndataset_kwargs:\n  statements_csv: {csv_path}\n{extra}"
    )
    return _manager(folder, **metadata).load([name])["tasks"][name]


def test_statements_csv_template(tmp_path):
    task = _statements_task(tmp_path)
    docs = list(task.test_docs())
    assert task.config.output_type == "multiple_choice" and task.config.metadata["kind"] == "parametric"
    assert len(docs) == 6  # 10 rows, 4 in the prefix
    assert [d["row"] for d in docs] == sorted(d["row"] for d in docs)  # file order
    for doc in docs:  # the CSV alternates true and false; label 0 = " True", as in city_facts_tf
        assert doc["is_true"] is (doc["row"] % 2 == 0) and doc["label"] == doc["row"] % 2
        assert task.doc_to_choice(doc) == ["True", "False"] and task.doc_to_target(doc) == doc["label"]
        prompt = task.doc_to_text(doc)
        assert prompt.endswith(f"Statement: {doc['statement']}\nTrue or false? Answer:")
        head = prompt.rsplit("Statement: ", 1)[0]
        assert head.count(" Answer: True\n\n") == head.count(" Answer: False\n\n") == 2
        assert head == docs[0]["input"].rsplit("Statement: ", 1)[0]  # one fixed prefix
    requests = task.construct_requests(docs[0], task.doc_to_text(docs[0]))  # lm-eval scores " True" / " False"
    assert [r.arguments[1] for r in requests] == [" True", " False"]
    assert not any(f"Statement: {d['statement']}\nTrue or false? Answer: " in head for d in docs)  # shots not evaluated


def test_statements_prefix_is_seeded_and_balanced(tmp_path):
    truths = [True] * 14 + [False] * 6  # a file sorted by label, mostly true
    draws = {seed: user_statements.draw_fewshot(truths, 6, seed) for seed in range(3)}
    assert draws[0] == user_statements.draw_fewshot(truths, 6, 0)
    assert len(set(map(tuple, draws.values()))) == 3
    for shots in draws.values():
        assert len(set(shots)) == 6
        for pair in (shots[0:2], shots[2:4], shots[4:6]):  # one true and one false in each pair
            assert sorted(truths[i] for i in pair) == [False, True]
    # an odd count gives the extra shot to the label with more rows to spare
    assert sum(truths[i] for i in user_statements.draw_fewshot(truths, 5, 0)) == 3
    # task_seed reaches the draw through lm-eval's run metadata
    rows = user_statements.load_statements(_write(tmp_path, STATEMENTS))
    head = lambda docs: docs[0]["input"].rsplit("Statement: ", 1)[0]  # noqa: E731
    seeded = head(list(_statements_task(tmp_path, task_seed=1).test_docs()))
    assert seeded == head(user_statements.build_docs(rows, 4, 1)) != head(user_statements.build_docs(rows, 4, 0))


def test_statements_csv_with_bom_crlf_and_extra_columns(tmp_path):
    path = _write(tmp_path, '\ufeffstatement,label,source\r\nA is B.,true,x\r\n"C, D",No,y\r\n')
    assert user_statements.load_statements(path) == [
        {"statement": "A is B.", "is_true": True},
        {"statement": "C, D", "is_true": False},
    ]


def test_statements_prefix_when_a_label_is_short(caplog):
    truths = [True] * 2 + [False] * 10
    with caplog.at_level("WARNING", logger="qk_ablate.task_data.user_statements"):
        shots = user_statements.draw_fewshot(truths, 4, 0)
    # the short label gives all but one row (one true stays evaluated); false rows fill the prefix
    assert sorted(truths[i] for i in shots) == [False, False, False, True]
    assert "the prefix holds 1 true and 3 false" in caplog.text
    assert sorted(user_statements.draw_fewshot([True] * 5, 4, 0)) == [1, 2, 3, 4]  # one label only: a seeded 4 of 5
    _one_line_error(lambda: user_statements.draw_fewshot([True] * 5, 5, 0), r"at most 4\)")


def test_statements_choice_words(tmp_path):
    task = _statements_task(tmp_path, extra='  statements_choices: ["Yes", "No"]\n  statements_fewshot: 2\n')
    docs = list(task.test_docs())
    assert len(docs) == 8 and task.doc_to_choice(docs[0]) == ["Yes", "No"]
    head, question = docs[0]["input"].rsplit("Statement: ", 1)
    assert question.endswith("\nYes or no? Answer:")
    assert head.count(" Answer: Yes\n\n") == head.count(" Answer: No\n\n") == 1


def test_statements_scored_by_likelihood(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    class SaysTrue(LM):  # always prefers " True"
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(0.0 if r.arguments[1] == " True" else -1.0, True) for r in requests]

        loglikelihood_rolling = generate_until = None  # a multiple_choice task asks for neither

    skewed = STATEMENTS + "".join(f"Statement {i} is true.,true\n" for i in range(4))  # 9 true, 5 false
    _write(tmp_path, skewed, "skewed.csv")
    (tmp_path / "skewed.yaml").write_text(
        f"include: qk_ablate:statements_csv\ntask: skewed\ndataset_kwargs:\n  statements_csv: {tmp_path / 'skewed.csv'}\n"
    )
    results = simple_evaluate(model=SaysTrue(), tasks=["skewed"], task_manager=_manager(tmp_path))
    # always " True" is right on the 7 true of the 10 evaluated statements (the prefix took 2 + 2)
    assert results["results"]["skewed"]["acc,none"] == pytest.approx(7 / 10)


@pytest.mark.parametrize(
    ("content", "options", "match"),
    [
        (None, {}, r"statements_csv '.*missing.csv' does not exist"),
        ("statement,truth\nA,true\n", {}, r"has no column 'label' \(its first line reads \['statement', 'truth'\]\)"),
        (
            "statement,label\nA,true\nB,maybe\n",
            {},
            r"has label 'maybe' on line 3, which is not one of true, false, yes, no, 1, 0 \(any case\)",
        ),
        ("statement,label\nA,true\n,false\n", {}, "has an empty statement on line 3"),
        (b"statement,label\n\xe9t\xe9,true\n", {}, "is not UTF-8 text"),
        ("statement,label\n", {}, "has no rows below its header"),
        (
            "statement,label\nA,true\nB,false\nC,false\n",
            {"statements_fewshot": 2},
            r"statements_fewshot is 2 but the CSV has 1 true and 2 false statements; .* \(at most 1\)",
        ),
        (STATEMENTS, {"statements_fewshot": "many"}, "statements_fewshot must be a whole number"),
        (STATEMENTS, {"statements_choices": [True, False]}, "statements_choices must be two different quoted words"),
        (STATEMENTS, {"statements_choices": ["Yes", "Yes"]}, "statements_choices must be two different"),
        (STATEMENTS, {"statements_choices": "Yes,No"}, "statements_choices must be two different"),
    ],
)
def test_bad_statements_csv(tmp_path, content, options, match):
    path = tmp_path / "missing.csv" if content is None else _write(tmp_path, content)
    _one_line_error(lambda: user_statements.statements_dataset(statements_csv=str(path), **options), match)


def test_bad_file_through_lm_eval_and_missing_option(tmp_path):
    path = _write(tmp_path, "statement,label\nA,true\nB,False\nC,maybe\n")
    (tmp_path / "bad.yaml").write_text(
        f"include: qk_ablate:statements_csv\ntask: bad\ndataset_kwargs:\n  statements_csv: {path}\n"
    )
    _one_line_error(lambda: _manager(tmp_path).load(["bad"]), "label 'maybe' on line 4")
    _one_line_error(user_statements.statements_dataset, r"needs dataset_kwargs: \{statements_csv: <path to the CSV>\}")
    _one_line_error(user_facts.facts_dataset, r"needs dataset_kwargs: \{facts_csv: <path to the CSV>\}")


def test_users_yaml_may_declare_another_kind(tmp_path):
    metadata = "metadata:\n  version: 1.0\n  kind: contextual\n"  # replaces the template's whole mapping
    task = _statements_task(tmp_path, extra=metadata)
    assert task.config.metadata["kind"] == "contextual" and "task_seed" not in task.config.metadata


def test_niah_essay_task_reads_the_metadata_folder(essay_dir, smol):
    from lm_eval.tasks import TaskManager

    from qk_ablate.paths import tasks_dir

    manager = TaskManager(
        include_path=tasks_dir(),
        include_defaults=False,
        metadata={"pretrained": "smollm2-135m", "num_docs": 2, "essay_dir": str(essay_dir)},
    )
    docs = list(manager.load(["niah_essay_1k"])["tasks"]["niah_essay_1k"].test_docs())
    expected = build_niah_docs(smol, 1024, num_docs=2, haystack=haystack.essay_haystack(str(essay_dir)))
    assert docs_digest(docs) == docs_digest(expected)
    assert "The grass is green" not in docs[0]["input"]


def test_essay_haystack_repeats_and_keeps_sentences(essay_dir):
    stack = haystack.essay_haystack(str(essay_dir))
    total = len(stack.words)
    assert stack.text(0, 5) == " ".join(stack.words[:5])
    assert stack.text(total - 2, total + 3) == " ".join(stack.words[-2:] + stack.words[:3])  # wraps around
    for depth in (0.0, 0.3, 0.77, 1.0):
        at = stack.place(depth, 5000)
        assert at == 0 or stack.words[(at - 1) % total][-1] in ".!?\"'"


def test_essay_errors(tmp_path, monkeypatch):
    with pytest.raises(QKAblateError, match="does not exist"):
        haystack.essay_haystack(str(tmp_path / "missing"))
    with pytest.raises(QKAblateError, match="no .txt files"):
        haystack.essay_haystack(str(tmp_path))
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(QKAblateError, match="at least 200 words"):
        haystack.essay_haystack(str(tmp_path))
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(QKAblateError, match="essay_dir"):
        haystack._read_hub("someone/essays", "text")


def test_country_continent_set():
    docs = continent.build_docs()
    assert len(docs) == continent.DEFAULT_NUM_DOCS
    codes = {d["country_code"] for d in docs}
    assert not codes & (NON_SOVEREIGN | continent.TRANSCONTINENTAL | set(continent.FEWSHOT))
    by_code = {d["country_code"]: d["continent"] for d in docs}
    assert by_code["FR"] == "Europe" and by_code["BR"] == "South America" and by_code["AU"] == "Oceania"
    assert docs_digest(docs) == docs_digest(continent.build_docs())
    assert docs_digest(docs) != docs_digest(continent.build_docs(seed=1))
    assert {d["continent"] for d in docs} >= {"Africa", "Asia", "Europe", "North America", "South America", "Oceania"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" Europe", True),
        (" Europe.", True),
        (" europe\nAsia", True),
        (" Asia", False),
        (" Not Europe", False),
        (" Europe or Asia", False),
        (" Eurasia", False),
        ("", False),
    ],
)
def test_country_continent_scoring(output, expected):
    doc = next(d for d in continent.build_docs() if d["country_code"] == "FR")
    assert alias_process_results(doc, [output]) == {"acc": float(expected)}


def test_oceania_aliases():
    doc = next(d for d in continent.build_docs() if d["country_code"] == "AU")
    for answer in (" Oceania", " Australia and Oceania", " Australia/Oceania"):
        assert alias_process_results(doc, [answer]) == {"acc": 1.0}


@pytest.mark.parametrize(("content", "match"), [("", "is empty"), ("Paris,France\n", "is its header line missing")])
def test_a_bad_csv_is_one_line_while_lm_eval_matches_task_names(tmp_path, content, match):
    """The CSV of a task on our facts template is read when lm-eval matches task names, before the
    model loads (lm-eval builds the tasks after it)."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    (tmp_path / "data.csv").write_text(content)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_facts.yaml").write_text(
        f"include: qk_ablate:facts_csv\ntask: my_facts\ndataset_kwargs:\n  facts_csv: {tmp_path / 'data.csv'}\n"
    )
    with pytest.raises(QKAblateError, match=match):
        EvaluatorConfig(tasks=["my_facts"], include_path=str(tmp_path / "tasks")).process_tasks()
