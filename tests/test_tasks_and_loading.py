"""Task registry and example loading: built-in specs, local formats, the shared data, the hub path, errors."""
import csv
import dataclasses
import json
import re
import string
from pathlib import Path

import pytest

import ds_prompt.data.tasks as tasks_module
from ds_prompt.data.loading import DEMO_DIR, Example, load_examples, resolve_data_dir
from ds_prompt.data.tasks import get_task, list_tasks, register_task, task_from_dict
from ds_prompt.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "counts.json").is_file(), reason="shared data not present")

REQUIRED_TASKS = {
    "demo": ("negative", "positive"), "sst2": ("negative", "positive"), "imdb": ("negative", "positive"),
    "mr": ("negative", "positive"), "cr": ("negative", "positive"), "yelp_polarity": ("negative", "positive"),
    "amazon_polarity": ("negative", "positive"), "mnli": ("entailment", "neutral", "contradiction"),
    "snli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"), "wnli": ("not_entailment", "entailment"),
    "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
    "agnews": ("world", "sports", "business", "science"),
    "trec": ("abbreviation", "entity", "description", "human", "location", "number"),
    "cola": ("unacceptable", "acceptable"),
}


def _counts() -> dict:
    return json.loads((SHARED_DATA / "counts.json").read_text())


def _first_record(path: Path) -> dict:
    with path.open(encoding="utf-8") as lines:
        return json.loads(next(lines))


def _spec(**changes) -> dict:
    """A valid custom task config, with `changes` applied."""
    config = dict(
        name="toy", kind="sentiment", text_fields=["text"], labels=["bad", "good"],
        label_words=[["bad"], ["good"]], template="{text} It was {mask}.",
    )
    config.update(changes)
    return config


TOY = task_from_dict(_spec())
PAIR = task_from_dict(_spec(name="toy_pair", text_fields=["text_a", "text_b"], template="{text_a} ? {mask} , {text_b}"))
TOY_RECORDS = [
    {"text": "a fine day", "label": "good"},
    {"text": "rain, wind, and \"cold\"", "label": "bad"},
    {"text": "sunny again", "label": "good"},
]


def _write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ registry


def test_required_tasks_are_registered_with_their_label_names():
    for name, labels in REQUIRED_TASKS.items():
        assert name in list_tasks()
        assert get_task(name).labels == labels, name


@pytest.mark.parametrize("name", list_tasks())
def test_every_registered_task_is_well_formed(name):
    task = get_task(name)
    placeholders = [f for _, f, _, _ in string.Formatter().parse(task.template) if f is not None]
    assert placeholders.count("mask") == 1
    assert set(placeholders) == set(task.text_fields) | {"mask"}
    # The label word comes last so that causal LMs can score it as the next token.
    assert re.fullmatch(r".*\{mask\}[.?!]?", task.template)
    assert task.num_labels == len(task.labels) == len(task.label_words) == len(task.label_descriptions)
    assert all(words and all(w and " " not in w for w in words) for words in task.label_words)
    assert task.instructions and all(text.strip() for text in task.instructions)
    assert len(set(task.instructions)) == len(task.instructions)
    if task.hub_path is not None:
        assert sorted(task.hub_label_names) == sorted(task.labels)
    assert name == "demo" or task.hub_path is not None


def test_instructions_are_distinct_across_tasks_and_similar_within_a_kind():
    owners = {}
    for name in list_tasks():
        for text in get_task(name).instructions:
            assert text not in owners, f"{name} repeats an instruction of {owners.get(text)}"
            owners[text] = name
    sentiment = [get_task(n) for n in list_tasks() if get_task(n).kind == "sentiment"]
    assert all("positive or negative" in t.instructions[0] for t in sentiment)


def test_label_words_follow_the_reference_verbalizers():
    assert get_task("sst2").label_words == (("negative",), ("positive",))
    assert get_task("mnli").label_words == (("yes",), ("maybe",), ("no",))
    assert get_task("rte").label_words == (("yes",), ("no",))
    assert get_task("wnli").label_words == (("no",), ("yes",))  # WNLI lists not_entailment first, as on the hub
    assert get_task("mrpc").label_words == (("false",), ("true",))
    assert get_task("mnli").eval_split == "validation_matched"
    assert get_task("agnews").eval_split == "test"


def test_get_task_ignores_case_dashes_and_underscores():
    assert get_task("SST-2") is get_task("sst2")
    assert get_task("AG_News") is get_task("agnews")


def test_unknown_task_names_the_value_and_the_known_tasks():
    with pytest.raises(UserError, match=r"unknown task 'sst3': did you mean 'sst2'\?.*agnews, amazon_polarity"):
        get_task("sst3")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Tasks registered by a test disappear after it."""
    monkeypatch.setattr(tasks_module, "_REGISTRY", dict(tasks_module._REGISTRY))


def test_register_task_refuses_duplicates_unless_overwrite(scratch_registry):
    spec = dataclasses.replace(get_task("sst2"), name="test_only_sst2")
    register_task(spec)
    assert get_task("test_only_sst2") is spec
    with pytest.raises(UserError, match="'test_only_sst2' is already registered.*overwrite=True"):
        register_task(spec)
    other = dataclasses.replace(spec, instructions=("Another instruction?",))
    register_task(other, overwrite=True)
    assert get_task("test_only_sst2") is other


def test_task_from_dict_round_trips_a_builtin_through_json():
    for name in ("rte", "trec", "amazon_polarity"):
        spec = get_task(name)
        assert task_from_dict(json.loads(json.dumps(dataclasses.asdict(spec)))) == spec


def test_task_from_dict_fills_defaults_and_accepts_shorthands():
    spec = task_from_dict(_spec(label_words=["bad", ["good", "great"]], hub_columns={"sentence": "text"}))
    assert spec.label_words == (("bad",), ("good", "great"))
    assert spec.hub_columns == (("sentence", "text"),)
    assert spec.label_descriptions == ("This example is bad.", "This example is good.")
    assert spec.instructions and spec.kind == "sentiment" and spec.metric == "accuracy"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, r"unknown key\(s\) colour"),
        ({"template": None}, r"template must be a string, got None"),
        ({"labels": "bad,good"}, r"labels \('bad,good',\) must be at least two"),
        ({"label_words": [["bad"]]}, r"1 label_words entries for 2 labels"),
        ({"label_words": [["bad"], []]}, r"label words \(\) of label 'good'"),
        ({"template": "{text} {mask} and {mask}"}, r"has 2 \{mask\} placeholders"),
        ({"template": "It was {mask}."}, r"lacks the text field\(s\) \{text\}"),
        ({"template": "{text} {sentence} {mask}"}, r"unknown placeholder\(s\) \['sentence'\]"),
        ({"name": "My Task"}, r"task name 'My Task' is invalid"),
        ({"hub_label_names": ["good", "ugly"]}, r"hub_label_names \('good', 'ugly'\)"),
        ({"metric": "bleu"}, r"metric 'bleu' is unknown"),
        ({"label_descriptions": ["only one"]}, r"label_descriptions \('only one',\)"),
    ],
)
def test_task_from_dict_rejects_bad_configs(changes, message):
    with pytest.raises(UserError, match=message):
        task_from_dict(_spec(**changes))


def test_task_from_dict_names_missing_keys():
    config = _spec()
    del config["template"], config["labels"]
    with pytest.raises(UserError, match="missing key\\(s\\) labels, template"):
        task_from_dict(config)


# ------------------------------------------------------------------------------------------------ shared data


@needs_shared
@pytest.mark.parametrize("name", ["sst2", "mr", "agnews", "rte", "qnli", "snli", "mrpc", "cola", "wnli"])
def test_shared_eval_split_counts_and_first_example(name):
    task = get_task(name)
    eval_split = next(split for split in _counts()[name] if split != "train")
    examples = load_examples(task, "eval", str(SHARED_DATA))
    assert len(examples) == _counts()[name][eval_split]
    first = _first_record(SHARED_DATA / name / f"{eval_split}.jsonl")
    assert examples[0].texts == tuple(first[f] for f in task.text_fields)
    assert task.labels[examples[0].label] == first["label"]
    # Every label name in the file was mapped to a class of the task.
    assert {e.label for e in examples} == set(range(task.num_labels))


@needs_shared
@pytest.mark.parametrize("name", ["rte", "wnli", "snli"])
def test_shared_train_counts_via_root_and_task_folder(name):
    task = get_task(name)
    from_root = load_examples(task, "train", str(SHARED_DATA))
    from_folder = load_examples(task, "train", str(SHARED_DATA / name))
    assert len(from_root) == _counts()[name]["train"]
    assert from_root == from_folder
    first = _first_record(SHARED_DATA / name / "train.jsonl")
    assert task.labels[from_root[0].label] == first["label"]


@needs_shared
def test_root_and_task_folder_resolve_to_the_same_folder():
    task = get_task("mrpc")
    assert resolve_data_dir(task, str(SHARED_DATA)) == SHARED_DATA / "mrpc"
    assert resolve_data_dir(task, str(SHARED_DATA / "mrpc")) == SHARED_DATA / "mrpc"
    subset = load_examples(task, "train", str(SHARED_DATA), limit=50, seed=3)
    assert subset == load_examples(task, "train", str(SHARED_DATA / "mrpc"), limit=50, seed=3)


@needs_shared
@pytest.mark.parametrize("name", ["mr", "agnews"])
def test_eval_alias_falls_back_to_test(name):
    examples = load_examples(get_task(name), "eval", str(SHARED_DATA))
    assert len(examples) == _counts()[name]["test"]
    assert examples == load_examples(get_task(name), "test", str(SHARED_DATA))


@needs_shared
def test_limit_is_a_seeded_deterministic_subset():
    task = get_task("sst2")
    everything = load_examples(task, "validation", str(SHARED_DATA))
    first = load_examples(task, "validation", str(SHARED_DATA), limit=50, seed=0)
    assert len(first) == 50
    assert first == load_examples(task, "validation", str(SHARED_DATA), limit=50, seed=0)
    assert first != load_examples(task, "validation", str(SHARED_DATA), limit=50, seed=1)
    positions = [everything.index(example) for example in first]
    assert positions == sorted(positions)  # a subset in file order
    assert load_examples(task, "validation", str(SHARED_DATA), limit=10_000) == everything


# ------------------------------------------------------------------------------------------------ formats


def _write_all_formats(root: Path, records: list) -> list[Path]:
    header = list(records[0])
    folders = []
    for fmt in ("jsonl", "json", "json_data", "tsv", "csv", "parquet"):
        folder = root / fmt
        folder.mkdir()
        folders.append(folder)
        if fmt == "jsonl":
            _write_jsonl(folder / "train.jsonl", records)
        elif fmt == "json":
            (folder / "train.json").write_text(json.dumps(records), encoding="utf-8")
        elif fmt == "json_data":
            (folder / "train.json").write_text(json.dumps({"data": records}), encoding="utf-8")
        elif fmt == "tsv":
            rows = ["\t".join(header)] + ["\t".join(str(r[k]) for k in header) for r in records]
            (folder / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        elif fmt == "csv":
            with (folder / "train.csv").open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=header)
                writer.writeheader()
                writer.writerows(records)
        else:
            import pyarrow
            import pyarrow.parquet

            pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), folder / "train.parquet")
    return folders


def test_all_file_formats_give_identical_examples(tmp_path):
    expected = [Example(("a fine day",), 1), Example(('rain, wind, and "cold"',), 0), Example(("sunny again",), 1)]
    for folder in _write_all_formats(tmp_path, TOY_RECORDS):
        assert load_examples(TOY, "train", str(folder)) == expected, folder.name


def test_pair_task_formats_keep_field_order(tmp_path):
    records = [{"text_b": "second", "text_a": "first", "label": 0}, {"text_a": "x y", "text_b": "z", "label": 1}]
    for folder in _write_all_formats(tmp_path, records):
        assert load_examples(PAIR, "train", str(folder)) == [Example(("first", "second"), 0), Example(("x y", "z"), 1)]


def test_integer_and_numeric_string_labels_are_class_ids(tmp_path):
    labels = [1, "0", " 1 ", 1.0, "GOOD"]
    _write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": label} for i, label in enumerate(labels)])
    assert [e.label for e in load_examples(TOY, "train", str(tmp_path))] == [1, 0, 1, 1, 1]


def test_split_file_priority_and_eval_fallback_order(tmp_path):
    _write_jsonl(tmp_path / "validation.jsonl", [{"text": "from validation", "label": "good"}])
    assert load_examples(TOY, "eval", str(tmp_path))[0].texts == ("from validation",)
    _write_jsonl(tmp_path / "test.jsonl", [{"text": "from test", "label": "good"}])
    assert load_examples(TOY, "eval", str(tmp_path))[0].texts == ("from validation",)
    (tmp_path / "validation.jsonl").unlink()
    assert load_examples(TOY, "eval", str(tmp_path))[0].texts == ("from test",)
    assert load_examples(TOY, "validation", str(tmp_path))[0].texts == ("from test",)  # validation is TOY's eval_split
    (tmp_path / "test.json").write_text(json.dumps([{"text": "json loses to jsonl", "label": 0}]))
    assert load_examples(TOY, "test", str(tmp_path))[0].texts == ("from test",)


def test_task_folder_found_case_insensitively_under_a_root(tmp_path):
    _write_jsonl(tmp_path / "SST-2" / "train.jsonl", [{"text": "fine", "label": "positive"}])
    assert resolve_data_dir(get_task("sst2"), str(tmp_path)) == tmp_path / "SST-2"


# ------------------------------------------------------------------------------------------------ errors


def _error(task, split, data_dir, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_examples(task, split, str(data_dir), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_data_dir_is_named(tmp_path):
    assert f"data_dir '{tmp_path / 'nope'}' does not exist" in _error(TOY, "train", tmp_path / "nope")


def test_root_without_the_task_lists_its_contents(tmp_path):
    (tmp_path / "rte").mkdir()
    message = _error(get_task("mrpc"), "train", tmp_path)
    assert "no 'mrpc' folder" in message and "found: rte/" in message


def test_missing_split_lists_what_is_there(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", TOY_RECORDS)
    (tmp_path / "notes.txt").write_text("hello")
    message = _error(TOY, "test", tmp_path)
    assert "no file for split 'test'" in message and "found: notes.txt, train.jsonl" in message


def test_corrupt_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": "good"}\n\n{"text": "broken", "label": \n')
    assert f"{path}:3: not valid JSON" in _error(TOY, "train", tmp_path)


def test_corrupt_json_names_file_and_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"text": "ok", "label": 1},\n{"text": oops}\n]')
    assert f"{path}:3: not valid JSON" in _error(TOY, "train", tmp_path)


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "caf\xe9", "label": "good"}\n')
    assert f"'{path}' is not UTF-8" in _error(TOY, "train", tmp_path)


def test_csv_row_with_wrong_column_count_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\nfine,good\ncommas, unquoted,good\n")
    assert f"{path}:3: 3 columns but the header has 2" in _error(TOY, "train", tmp_path)


def test_missing_field_is_named(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"text_a": "a", "sentence2": "b", "label": 0}])
    message = _error(PAIR, "train", tmp_path)
    assert f"{path}:1: missing field 'text_b'" in message and "found text_a, sentence2, label" in message


def test_unknown_label_lists_valid_labels(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", TOY_RECORDS + [{"text": "meh", "label": "neutral"}])
    message = _error(TOY, "train", tmp_path)
    assert ":4: unknown label 'neutral'" in message and "valid labels are bad, good" in message


def test_out_of_range_label_id_is_named(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": -1}])
    assert "label id -1 is out of range" in _error(TOY, "train", tmp_path)


def test_non_string_text_is_named(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"text": 42, "label": "good"}])
    assert f"{path}:1: field 'text' must be a string, got int 42" in _error(TOY, "train", tmp_path)


def test_empty_dataset_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n\n")
    assert f"'{path}' holds no examples" in _error(TOY, "train", tmp_path)


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit_is_named(tmp_path, limit):
    assert f"limit {limit!r} must be a positive number" in _error(TOY, "train", tmp_path, limit=limit)


def test_task_without_hub_or_data_dir_asks_for_data_dir():
    with pytest.raises(UserError, match="task 'toy' has no hub dataset: pass --data_dir"):
        load_examples(TOY, "train")


# ------------------------------------------------------------------------------------------------ hub (mocked)


def _fake_hub(monkeypatch, tables: dict):
    """Replace datasets.load_dataset with an in-memory lookup by (path, config, split)."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if (path, name, split) not in tables:
            raise ConnectionError("Couldn't reach the Hugging Face Hub\nsecond line")
        return datasets.Dataset.from_dict(tables[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_rows_are_renamed_mapped_and_unlabeled_rows_dropped(monkeypatch):
    snli = {"premise": ["p0", "p1", "p2", "p3"], "hypothesis": ["h0", "h1", "h2", "h3"], "label": [2, -1, 0, 1]}
    calls = _fake_hub(monkeypatch, {("stanfordnlp/snli", None, "validation"): snli})
    examples = load_examples(get_task("snli"), "eval")
    assert calls == [("stanfordnlp/snli", None, "validation")]
    assert examples == [Example(("p0", "h0"), 2), Example(("p2", "h2"), 0), Example(("p3", "h3"), 1)]


def test_hub_label_order_is_mapped_by_name(monkeypatch):
    spec = dataclasses.replace(
        get_task("sst2"), name="test_only_flipped", hub_label_names=("positive", "negative"), hub_path="toy/flipped",
        hub_config=None,
    )
    _fake_hub(monkeypatch, {("toy/flipped", None, "train"): {"sentence": ["good", "awful"], "label": [0, 1]}})
    assert [e.label for e in load_examples(spec, "train")] == [1, 0]


def test_hub_split_aliases_and_limit(monkeypatch):
    mnli = {"premise": [f"p{i}" for i in range(20)], "hypothesis": ["h"] * 20, "label": [i % 3 for i in range(20)]}
    calls = _fake_hub(monkeypatch, {("nyu-mll/glue", "mnli", "validation_matched"): mnli})
    subset = load_examples(get_task("mnli"), "eval", limit=5, seed=1)
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_matched")
    assert len(subset) == 5 and subset == load_examples(get_task("mnli"), "eval", limit=5, seed=1)
    assert subset != load_examples(get_task("mnli"), "eval", limit=5, seed=2)


def test_hub_missing_column_names_it(monkeypatch):
    _fake_hub(monkeypatch, {("fancyzhx/ag_news", None, "train"): {"content": ["x"], "label": [0]}})
    with pytest.raises(UserError, match="has no column 'text' \\(columns: content, label\\)"):
        load_examples(get_task("agnews"), "train")


def test_hub_failure_tells_the_user_to_pass_data_dir(monkeypatch):
    _fake_hub(monkeypatch, {})
    with pytest.raises(UserError) as info:
        load_examples(get_task("qqp"), "train")
    message = str(info.value)
    assert "\n" not in message
    assert "could not load nyu-mll/glue (qqp) split 'train'" in message
    assert "ConnectionError: Couldn't reach the Hugging Face Hub" in message
    assert "--data_dir <root> holding qqp/train.jsonl" in message


# ------------------------------------------------------------------------------------------------ demo


def _demo_texts(split: str) -> list[str]:
    return [e.texts[0] for e in load_examples(get_task("demo"), split)]


def test_demo_loads_from_the_bundled_folder_without_data_dir():
    assert resolve_data_dir(get_task("demo"), None) == DEMO_DIR
    assert resolve_data_dir(get_task("sst2"), None) is None


@pytest.mark.parametrize("split, size", [("train", 400), ("validation", 160)])
def test_demo_counts_balance_and_length(split, size):
    examples = load_examples(get_task("demo"), split)
    assert len(examples) == size
    assert sum(e.label for e in examples) == size // 2
    assert all(5 <= len(e.texts[0].split()) <= 25 for e in examples)


def test_demo_has_no_duplicates_within_or_across_splits():
    def normalize(text):
        return re.sub(r"[^a-z0-9 ]", "", text.lower())

    train = [normalize(t) for t in _demo_texts("train")]
    validation = [normalize(t) for t in _demo_texts("validation")]
    assert len(set(train)) == len(train) and len(set(validation)) == len(validation)
    assert not set(train) & set(validation)
