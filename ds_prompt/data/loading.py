"""Loading a task's labeled examples from local files or from the Hugging Face hub.

Local layout (the same as `shared/data`): a task folder holding each split as
- one file `<split>.jsonl` (or .json, .tsv, .csv, .parquet; the text formats also gzipped, `.jsonl.gz`), or
- shards `<split>-*.<ext>` (e.g. `train-00000-of-00002.parquet`), also under `data/` (the hub's layout), or
- a `datasets` folder written by `save_to_disk`: a DatasetDict (`dataset_dict.json`) or one Dataset per split
  folder (`<split>/state.json`), read with `datasets.load_from_disk`;
each record carrying the task's text fields and a `label`; a data root holds one such folder per task
(`<root>/<task>/`). Labels may be names from `TaskSpec.labels` or class ids (ints or numeric strings). The
text formats are read line by line here, so every problem with a file is a one-line `UserError` naming the
file and line (a `datasets` folder: the split and row).
"""
from __future__ import annotations

import csv
import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ds_prompt.data.tasks import TaskSpec
from ds_prompt.errors import UserError, require

SPLIT_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".tsv.gz", ".csv.gz")
DEMO_DIR = Path(__file__).resolve().parent / "demo"
EVAL_ALIAS = "eval"


@dataclass(frozen=True)
class Example:
    """One labeled example: `texts` in `task.text_fields` order, `label` the class id (index in `task.labels`)."""

    texts: tuple[str, ...]
    label: int


# ------------------------------------------------------------------------------------------------ public API


def resolve_data_dir(task: TaskSpec, data_dir: str | None) -> Path | None:
    """The folder holding `task`'s split files, or None to load from the hub.

    `data_dir` may be the task folder itself or a root with one folder per task (`<root>/<task>/`, matched
    case-insensitively, ignoring '-' and '_'). Without `data_dir` only the bundled demo task has a folder.
    """
    if data_dir is None:
        return DEMO_DIR if task.name == "demo" else None
    root = Path(data_dir).expanduser()
    require(
        root.is_dir(),
        f"data_dir '{root}' does not exist or is not a folder: pass a folder holding <split>.jsonl files "
        f"or one folder per task (e.g. <root>/{task.name}/train.jsonl)",
    )
    task_folder = _task_subfolder(root, task.name)
    if task_folder is not None:
        return task_folder
    require(
        any(_is_split_file(path) for path in root.iterdir()),
        f"data_dir '{root}' has no '{task.name}' folder and no split files (found: {_listing(root)}): "
        f"pass the task folder itself or a root holding {task.name}/train.jsonl",
    )
    return root


def load_examples(
    task: TaskSpec,
    split: str,
    data_dir: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Labeled examples of `task`'s `split` ("train", "validation", "test", or "eval" = `task.eval_split`).

    Reads local files when `data_dir` is given (or for the bundled demo task), else the hub dataset
    `task.hub_path`. With `limit`, returns a random subset of that size chosen by `seed` (kept in file order);
    otherwise every example in file order.
    """
    require(isinstance(split, str) and split.strip() != "", f"split {split!r} must be a name such as 'train' or 'eval'")
    require(
        limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0),
        f"limit {limit!r} must be a positive number of examples (or None for all)",
    )
    folder = resolve_data_dir(task, data_dir)
    if folder is not None:
        examples = _load_local(task, split, folder)
        return [examples[i] for i in _pick(len(examples), limit, seed)]
    require(
        task.hub_path is not None,
        f"task '{task.name}' has no hub dataset: pass --data_dir with a folder holding {split}.jsonl "
        f"(fields {', '.join(task.text_fields)}, label in {', '.join(task.labels)})",
    )
    return _load_hub(task, split, limit, seed)


# ------------------------------------------------------------------------------------------------ local files


def read_input_file(task: TaskSpec, path: str | Path) -> tuple[list[Example], list[object]]:
    """(examples, ids) of a user's file for prediction (jsonl, json, csv, tsv or parquet): each record needs
    the task's text fields; its label is optional (-1 when absent); its id is the record's `id` or `idx`
    field, else its position. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input '{path}' does not exist: pass a .jsonl/.json/.csv/.tsv/.parquet file")
    if _suffix(path) not in SPLIT_SUFFIXES:
        raise UserError(f"--input '{path}' has suffix '{path.suffix}': use {', '.join(SPLIT_SUFFIXES)}")
    label_ids = _label_ids(task)
    examples, ids = [], []
    for where, record in _read_records(path):
        if isinstance(record, dict) and "label" not in record:
            record = {**record, "label": 0}
            example = _to_example(task, record, where, label_ids)
            example = Example(example.texts, -1)
        else:
            example = _to_example(task, record, where, label_ids)
        examples.append(example)
        ids.append(record.get("id", record.get("idx", len(ids))))
    require(examples, f"'{path}' holds no records: write one object per line with {', '.join(task.text_fields)}")
    return examples, ids


def read_texts(path: str | Path) -> list[str]:
    """Free texts, one per line (blank lines skipped), or from the string field `text` of each object of a
    .jsonl file (also gzipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input '{path}' does not exist: pass a text or .jsonl file, one input per line")
    if _suffix(path).removesuffix(".gz") == ".jsonl":
        texts = []
        for where, record in _read_jsonl(path):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f"{where}: needs a string field 'text'")
            texts.append(record["text"])
        return texts
    with _open_text(path) as lines:
        return [line.rstrip("\n") for line in lines if line.strip()]


def _task_subfolder(root: Path, task_name: str) -> Path | None:
    exact = root / task_name
    if exact.is_dir():
        return exact
    key = _folder_key(task_name)
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and _folder_key(p.name) == key), None)


def _folder_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _is_split_file(path: Path) -> bool:
    """A split file or shard, a `data/` folder holding them, or a `save_to_disk` folder (or its marker)."""
    if path.is_dir():
        return path.name == "data" or (path / "state.json").is_file()
    return path.is_file() and (_suffix(path) in SPLIT_SUFFIXES or path.name == "dataset_dict.json")


def _listing(folder: Path, most: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:most]) + (f", ... ({len(names)} entries)" if len(names) > most else "")
    return shown or "nothing"


def _split_names(task: TaskSpec, split: str) -> list[str]:
    if split in (EVAL_ALIAS, task.eval_split):
        return list(dict.fromkeys([task.eval_split, "test", "validation"]))
    return [split]


def _suffix(path: Path) -> str:
    """'.jsonl', '.jsonl.gz', ... (the suffixes that pick a reader)."""
    name = path.name
    return next((s for s in sorted(SPLIT_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix)


def _split_files(task: TaskSpec, split: str, folder: Path) -> list[Path]:
    """The split's file, or its shards in name order; eval requests fall back to test, then validation."""
    names = _split_names(task, split)
    for name in names:
        for base in (folder, folder / "data"):
            for suffix in SPLIT_SUFFIXES:
                single = base / f"{name}{suffix}"
                if single.is_file():
                    return [single]
                shards = sorted(p for p in base.glob(f"{name}-*{suffix}") if p.is_file() and _suffix(p) == suffix)
                if shards:
                    return shards
    raise UserError(
        f"no file for split '{split}' of task '{task.name}' in '{folder}' (looked for {' / '.join(names)} with "
        f"{', '.join(SPLIT_SUFFIXES)}, shards <split>-*.<ext>, data/<split>-*.<ext> and a save_to_disk folder; "
        f"found: {_listing(folder)}): add e.g. {names[0]}.jsonl or pick another split"
    )


def split_sources(task: TaskSpec, split: str, folder: Path) -> list[Path]:
    """The files `split` is read from (run identities fingerprint them): its file or shards, or a saved
    dataset's arrow files and state.json. UserError when the split has none."""
    names = _split_names(task, split)
    for name in names:
        saved = folder / name
        if (saved / "state.json").is_file():
            return sorted(saved.glob("*.arrow")) + [saved / "state.json"]
    return _split_files(task, split, folder)


def _saved_dataset(task: TaskSpec, split: str, folder: Path):
    """(datasets.Dataset, its name for messages) when `folder` holds a `save_to_disk` DatasetDict or per-split
    Dataset folders, else None."""
    names = _split_names(task, split)
    if (folder / "dataset_dict.json").is_file():
        from datasets import load_from_disk
        data = load_from_disk(str(folder))
        for name in names:
            if name in data:
                return data[name], f"{folder}[{name}]"
        raise UserError(f"'{folder}' (a saved DatasetDict) has no split {' / '.join(names)} (it has "
                        f"{', '.join(data)}): pick another split")
    for name in names:
        if (folder / name / "state.json").is_file():
            from datasets import load_from_disk
            return load_from_disk(str(folder / name)), str(folder / name)
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        raise UserError(f"'{folder}' is one saved Dataset without split names: save a DatasetDict, or put each "
                        f"split in <data_dir>/<split>/ (e.g. {names[0]}/)")
    return None


def _load_local(task: TaskSpec, split: str, folder: Path) -> list[Example]:
    label_ids = _label_ids(task)
    saved = _saved_dataset(task, split, folder)
    if saved is not None:
        dataset, name = saved
        examples = [_to_example(task, record, f"{name}: row {i + 1}", label_ids) for i, record in enumerate(dataset)]
        require(examples, f"'{name}' holds no examples")
        return examples
    examples = []
    files = _split_files(task, split, folder)
    for path in files:
        try:
            examples += [_to_example(task, record, where, label_ids) for where, record in _read_records(path)]
        except UnicodeDecodeError as err:
            raise UserError(f"'{path}' is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8") \
                from None
        except (OSError, EOFError) as err:
            if _suffix(path).endswith(".gz"):
                raise UserError(f"'{path}' is not a readable gzip file ({err}): recompress it") from None
            raise
    shown = f"'{files[0]}'" if len(files) == 1 else f"'{folder}' ({len(files)} shards of split '{split}')"
    require(examples, f"{shown} holds no examples: add records with fields {', '.join(task.text_fields)}, label")
    return examples


def _read_records(path: Path) -> Iterator[tuple[str, object]]:
    """(location, record) pairs; location reads `file:line` (or `file: item N` / `file: row N`)."""
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".tsv": lambda p: _read_delimited(p, "\t"),
        ".csv": lambda p: _read_delimited(p, ","),
        ".parquet": _read_parquet,
    }
    return readers[_suffix(path).removesuffix(".gz")](path)


def _open_text(path: Path, newline: str | None = None):
    """A text handle on `path`, decompressing `.gz` files."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return path.open(encoding="utf-8", newline=newline)


def _read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{where}: not valid JSON ({err.msg}, column {err.colno}): write one JSON object per line"
                ) from None


def _read_json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        with _open_text(path) as handle:
            data = json.loads(handle.read())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}): fix the file") from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    require(
        isinstance(data, list),
        f"'{path}' must hold a JSON list of records or {{\"data\": [...]}}, got {type(data).__name__}",
    )
    for number, record in enumerate(data, start=1):
        yield f"{path}: item {number}", record


def _read_delimited(path: Path, delimiter: str) -> Iterator[tuple[str, object]]:
    # TSV is read without quote handling (as GLUE's files need: quotes there are literal text); CSV uses the
    # standard quoting rules, so texts with commas must be quoted.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with _open_text(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader, None)
            require(header, f"'{path}' is empty: its first row must be a header such as text{delimiter}label")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path}:{reader.line_num}"
                require(
                    len(row) == len(header),
                    f"{where}: {len(row)} columns but the header has {len(header)} ({', '.join(header)}): "
                    + ("remove stray tabs" if delimiter == "\t" else "quote fields that contain commas"),
                )
                yield where, dict(zip(header, row))
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num}: unreadable row ({err}): fix the quoting") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"'{path}' is not a readable parquet file ({err}): rewrite it or use .jsonl") from None
    for number, record in enumerate(rows, start=1):
        yield f"{path}: row {number}", record


# ------------------------------------------------------------------------------------------ records -> Example


def _label_ids(task: TaskSpec) -> dict[str, int]:
    ids = {label.lower(): i for i, label in enumerate(task.labels)}
    ids.update({label: i for i, label in enumerate(task.labels)})
    return ids


def _to_example(task: TaskSpec, record: object, where: str, label_ids: dict[str, int]) -> Example:
    # Runs once per record: checks raise directly so that no message is formatted on the happy path.
    if not isinstance(record, dict):
        raise UserError(
            f"{where}: expected an object with fields {', '.join(task.text_fields)}, label; "
            f"got {type(record).__name__}"
        )
    for name in (*task.text_fields, "label"):
        if name not in record:
            raise UserError(
                f"{where}: missing field '{name}' (task '{task.name}' needs {', '.join(task.text_fields)}, label; "
                f"found {', '.join(map(str, record)) or 'no fields'}): rename the column"
            )
    for name in task.text_fields:
        if not isinstance(record[name], str):
            raise UserError(
                f"{where}: field '{name}' must be a string, got {type(record[name]).__name__} {record[name]!r}: "
                "quote the text"
            )
    return Example(tuple(record[name] for name in task.text_fields), _class_id(task, record["label"], where, label_ids))


def _class_id(task: TaskSpec, value: object, where: str, label_ids: dict[str, int]) -> int:
    """Class id of a label given as a name (exact, then case-insensitive), an int id or a numeric string."""
    if isinstance(value, str):
        name = value.strip()
        found = label_ids.get(name, label_ids.get(name.lower()))
        if found is not None:
            return found
        if not name.lstrip("-").isdigit():
            raise UserError(f"{where}: unknown label '{value}' for task '{task.name}': {_valid_labels(task)}")
        value = int(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{where}: label {value!r} is neither a name nor a class id: {_valid_labels(task)}")
    if not 0 <= value < task.num_labels:
        raise UserError(f"{where}: label id {value} is out of range for task '{task.name}': {_valid_labels(task)}")
    return value


def _valid_labels(task: TaskSpec) -> str:
    return f"valid labels are {', '.join(task.labels)} (or ids 0..{task.num_labels - 1})"


def _pick(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded random subset of size `limit` (all of range(n) when limit is None or >= n), sorted."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


# ------------------------------------------------------------------------------------------------ hub


def _load_hub(task: TaskSpec, split: str, limit: int | None, seed: int) -> list[Example]:
    hub_split = {EVAL_ALIAS: task.eval_split, "train": task.train_split}.get(split, split)
    source = f"{task.hub_path}" + (f" ({task.hub_config})" if task.hub_config else "") + f" split '{hub_split}'"
    dataset = _hub_dataset(task, split, hub_split, source)
    columns = {ours: hub for hub, ours in task.hub_columns}
    wanted = [columns.get(name, name) for name in (*task.text_fields, "label")]
    for name in wanted:
        require(
            name in dataset.column_names,
            f"hub dataset {source} has no column '{name}' (columns: {', '.join(dataset.column_names)}): "
            f"fix hub_columns of task '{task.name}'",
        )
    # Rows with label -1 are unlabeled (GLUE test splits, SNLI pairs without gold label).
    hub_labels = list(dataset[wanted[-1]])
    labeled = [i for i, label in enumerate(hub_labels) if label != -1]
    require(labeled, f"hub dataset {source} has no labeled rows: pick a labeled split such as '{task.eval_split}'")
    chosen = [labeled[i] for i in _pick(len(labeled), limit, seed)]
    rows = dataset.select(chosen)
    texts = [list(rows[column]) for column in wanted[:-1]]
    label_ids = _label_ids(task)
    examples = []
    for position, row_index in enumerate(chosen):
        record = {name: texts[k][position] for k, name in enumerate(task.text_fields)}
        record["label"] = _hub_label_name(task, hub_labels[row_index])
        examples.append(_to_example(task, record, f"hub {source} row {row_index}", label_ids))
    return examples


def _hub_dataset(task: TaskSpec, split: str, hub_split: str, source: str):
    import datasets

    try:
        return datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
    except Exception as err:  # offline, unknown split, removed dataset: all end the same way for the user
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        file_split = task.eval_split if split == EVAL_ALIAS else split  # the file local loading would read
        raise UserError(
            f"could not load {source} from the Hugging Face hub ({type(err).__name__}: {reason}); offline? pass "
            f"--data_dir <root> holding {task.name}/{file_split}.jsonl with fields "
            f"{', '.join(task.text_fields)}, label "
            f"({', '.join(task.labels)})"
        ) from None


def _hub_label_name(task: TaskSpec, value: object) -> object:
    """The hub's integer label as our label name (via `hub_label_names`); other values pass through."""
    if task.hub_label_names is not None and isinstance(value, int) and 0 <= value < len(task.hub_label_names):
        return task.hub_label_names[value]
    return value
