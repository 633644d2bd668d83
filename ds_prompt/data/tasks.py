"""Task registry: what a classification task looks like to a prompt-tuned model.

A `TaskSpec` is data: its text fields, its label names (class id = position in `labels`), the verbalizer
(`label_words`, the words a masked/causal/seq2seq LM scores for each class), one describing sentence per class
(for similarity heads of embedding-only encoders), a cloze `template` holding exactly one `{mask}`, a few
discrete `instructions` (T0-style prompts, used to retrieve memory prompts in SPT) and where to find the data on
the Hugging Face hub.

Every built-in template ends with `{mask}` (then at most punctuation) so that a causal LM can score the label
word as the next token after the whole input; masked and seq2seq LMs read the same template unchanged.
Label words are common English words that are single tokens for BERT WordPiece and GPT-2 BPE (with a leading
space). Verbalizers follow REFERENCE.md section 1 (sentiment negative/positive, paraphrase false/true); for
3-way NLI we use yes/maybe/no (LM-BFF style) rather than the paper's no/neutral/yes, and 2-way NLI uses yes/no.

Label names of the tasks that ship with local data match the files in `shared/data` (e.g. rte
entailment/not_entailment). Labels are listed in the hub's integer order, so integer labels in local files mean
the same class as on the hub.
"""
from __future__ import annotations

import difflib
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from ds_prompt.errors import UserError, require

# Metrics every evaluation reports (engine.evaluate); a task's `metric` names its headline one: accuracy for
# the built-in tasks except CoLA (matthews) and MRPC/QQP (f1), as GLUE reports them.
METRICS = ("accuracy", "f1", "matthews")


@dataclass(frozen=True)
class TaskSpec:
    """One classification task: fields, labels, verbalizer, template, instructions and hub source."""

    name: str
    kind: str
    text_fields: tuple[str, ...]
    labels: tuple[str, ...]
    label_words: tuple[tuple[str, ...], ...]
    label_descriptions: tuple[str, ...]
    template: str
    instructions: tuple[str, ...]
    hub_path: str | None = None
    hub_config: str | None = None
    hub_columns: tuple[tuple[str, str], ...] = ()
    hub_label_names: tuple[str, ...] | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        # Lists (from Python callers or JSON) become tuples so that specs stay hashable and comparable.
        for name, value in (
            ("text_fields", self.text_fields),
            ("labels", self.labels),
            ("label_descriptions", self.label_descriptions),
            ("instructions", self.instructions),
        ):
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "label_words", tuple(tuple(words) for words in self.label_words))
        object.__setattr__(self, "hub_columns", tuple(tuple(pair) for pair in self.hub_columns))
        if self.hub_label_names is not None:
            object.__setattr__(self, "hub_label_names", tuple(self.hub_label_names))
        _validate(self)

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _validate(spec: TaskSpec) -> None:
    require(
        isinstance(spec.name, str) and spec.name != "" and spec.name == spec.name.lower()
        and all(c.isalnum() or c == "_" for c in spec.name),
        f"task name {spec.name!r} is invalid: use lower-case letters, digits and '_' (e.g. 'my_task')",
    )
    where = f"task '{spec.name}'"
    require(isinstance(spec.kind, str) and spec.kind != "", f"{where}: kind {spec.kind!r} must be a non-empty string")
    _validate_text_fields(spec, where)
    _validate_labels(spec, where)
    _validate_template(spec, where)
    require(
        len(spec.instructions) > 0 and all(_nonempty_str(text) for text in spec.instructions),
        f"{where}: instructions {spec.instructions!r} must be one or more non-empty strings",
    )
    _validate_hub(spec, where)
    for split_field in ("train_split", "eval_split"):
        value = getattr(spec, split_field)
        require(_nonempty_str(value), f"{where}: {split_field} {value!r} must be a split name such as 'train'")
    require(spec.metric in METRICS, f"{where}: metric {spec.metric!r} is unknown: use one of {', '.join(METRICS)}")


def _validate_text_fields(spec: TaskSpec, where: str) -> None:
    require(len(spec.text_fields) > 0, f"{where}: text_fields is empty: use ('text',) or ('text_a', 'text_b')")
    for field_name in spec.text_fields:
        require(
            isinstance(field_name, str) and field_name.isidentifier() and field_name not in ("mask", "label"),
            f"{where}: text field {field_name!r} must be an identifier other than 'mask' and 'label'",
        )
    require(
        len(set(spec.text_fields)) == len(spec.text_fields),
        f"{where}: text_fields {spec.text_fields} repeat a name",
    )


def _validate_labels(spec: TaskSpec, where: str) -> None:
    require(
        len(spec.labels) >= 2 and all(_nonempty_str(label) for label in spec.labels),
        f"{where}: labels {spec.labels!r} must be at least two non-empty names",
    )
    require(len(set(spec.labels)) == len(spec.labels), f"{where}: labels {spec.labels} repeat a name")
    require(
        len(spec.label_words) == len(spec.labels),
        f"{where}: {len(spec.label_words)} label_words entries for {len(spec.labels)} labels {spec.labels}: "
        "give one tuple of words per label",
    )
    for label, words in zip(spec.labels, spec.label_words):
        require(
            len(words) > 0 and all(_nonempty_str(word) and word.strip() == word for word in words),
            f"{where}: label words {words!r} of label '{label}' must be one or more non-empty words without spaces "
            "around them",
        )
    require(
        len(spec.label_descriptions) == len(spec.labels) and all(_nonempty_str(d) for d in spec.label_descriptions),
        f"{where}: label_descriptions {spec.label_descriptions!r} must be one non-empty sentence per label "
        f"{spec.labels}",
    )


def _validate_template(spec: TaskSpec, where: str) -> None:
    require(_nonempty_str(spec.template), f"{where}: template {spec.template!r} must be a non-empty string")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(spec.template) if name is not None]
    except ValueError as err:
        raise UserError(f"{where}: template {spec.template!r} is malformed ({err}); write literal braces as {{{{ }}}}")
    allowed = set(spec.text_fields) | {"mask"}
    unknown = [name for name in names if name not in allowed]
    require(
        not unknown,
        f"{where}: template {spec.template!r} uses unknown placeholder(s) {unknown}: use only {{mask}} and "
        f"{', '.join('{' + f + '}' for f in spec.text_fields)}",
    )
    require(
        names.count("mask") == 1,
        f"{where}: template {spec.template!r} has {names.count('mask')} {{mask}} placeholders: use exactly one",
    )
    missing = ", ".join("{" + f + "}" for f in spec.text_fields if f not in names)
    require(not missing, f"{where}: template {spec.template!r} lacks the text field(s) {missing}: add them")


def _validate_hub(spec: TaskSpec, where: str) -> None:
    require(
        spec.hub_path is None or _nonempty_str(spec.hub_path),
        f"{where}: hub_path {spec.hub_path!r} must be a string",
    )
    require(
        spec.hub_config is None or _nonempty_str(spec.hub_config),
        f"{where}: hub_config {spec.hub_config!r} must be a string",
    )
    for pair in spec.hub_columns:
        require(
            len(pair) == 2 and all(_nonempty_str(name) for name in pair),
            f"{where}: hub_columns entry {pair!r} must be a (hub column, our field) pair of names",
        )
    targets = [ours for _, ours in spec.hub_columns]
    unknown = [t for t in targets if t not in (*spec.text_fields, "label")]
    require(
        not unknown,
        f"{where}: hub_columns rename to unknown field(s) {unknown}: use {spec.text_fields} or 'label'",
    )
    if spec.hub_label_names is not None:
        require(
            sorted(spec.hub_label_names) == sorted(spec.labels),
            f"{where}: hub_label_names {spec.hub_label_names} must list the labels {spec.labels} in the hub's order",
        )


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


# --------------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, TaskSpec] = {}


def _lookup_key(name: str) -> str:
    """Case-, '-' and '_'-insensitive key, so 'SST-2', 'ag_news' and 'AGNews' find sst2 and agnews."""
    return name.lower().replace("-", "").replace("_", "")


def register_task(spec: TaskSpec, overwrite: bool = False) -> None:
    """Add `spec` to the registry; a task with the same (normalized) name needs `overwrite=True`."""
    require(
        isinstance(spec, TaskSpec),
        f"register_task got {type(spec).__name__}: pass a TaskSpec (or use task_from_dict)",
    )
    key = _lookup_key(spec.name)
    existing = _REGISTRY.get(key)
    require(
        existing is None or overwrite,
        f"task '{spec.name}' is already registered (as '{existing.name if existing else ''}'): "
        "pass overwrite=True or choose another name",
    )
    _REGISTRY[key] = spec


TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def use_task(value) -> TaskSpec:
    """The task `value` names: a registered name, a task file (.yaml/.yml/.json holding one task mapping), or
    a mapping (a `task:` block of a run config). A file or mapping is validated and registered under its name,
    which must not clash with a different registered task."""
    if isinstance(value, dict):
        return _adopt(task_from_dict(value), "the task mapping")
    if isinstance(value, str) and value.endswith(TASK_FILE_SUFFIXES):
        path = Path(value).expanduser()
        require(path.is_file(), f"task file '{value}' does not exist: pass a task name or a .yaml/.json task file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
        except Exception as exc:  # yaml's own error types
            raise UserError(f"task file '{path}' cannot be parsed ({type(exc).__name__}): fix its syntax") from None
        return _adopt(task_from_dict(data), f"task file '{path}'")
    return get_task(value)


def _adopt(spec: TaskSpec, where: str) -> TaskSpec:
    existing = _REGISTRY.get(_lookup_key(spec.name))
    if existing is not None and existing != spec:
        require(existing.name not in _BUILTIN_NAMES, f"{where} defines task '{spec.name}', a built-in task's "
                                                     f"name: rename it")
    register_task(spec, overwrite=True)
    return spec


def task_record(spec: TaskSpec) -> dict | None:
    """The mapping of a custom task (recorded in prompt.json so later commands rebuild it), None for built-ins."""
    if spec.name in _BUILTIN_NAMES and _REGISTRY.get(_lookup_key(spec.name)) == spec:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}


def get_task(name: str) -> TaskSpec:
    """The registered task called `name` (case-insensitive; '-' and '_' are ignored)."""
    require(isinstance(name, str), f"task name {name!r} must be a string such as 'sst2'")
    if name.endswith(TASK_FILE_SUFFIXES):
        return use_task(name)
    spec = _REGISTRY.get(_lookup_key(name))
    if spec is None:
        close = difflib.get_close_matches(name.lower(), list_tasks(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(
            f"unknown task '{name}': {hint}known tasks are {', '.join(list_tasks())} "
            "(or register one with ds_prompt.data.tasks.register_task / a task config dict)"
        )
    return spec


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(spec.name for spec in _REGISTRY.values())


# ------------------------------------------------------------------------------------------ custom task configs

_REQUIRED_KEYS = ("name", "text_fields", "labels", "label_words", "template")
_KEYS = tuple(f.name for f in fields(TaskSpec))


def task_from_dict(d: dict) -> TaskSpec:
    """Build a `TaskSpec` from a JSON/YAML mapping (e.g. a custom task in a run config).

    Required keys: name, text_fields, labels, label_words, template. `kind` defaults to "custom",
    `label_descriptions` to "This example is <label>." and `instructions` to one generic question. Strings are
    accepted where a list of one string is meant (text_fields, instructions, each entry of label_words), and
    hub_columns may be a mapping {hub column: our field}.
    """
    require(isinstance(d, dict), f"task config must be a mapping of keys to values, got {type(d).__name__}")
    label = f"task config '{d.get('name', '?')}'"
    unknown = sorted(set(d) - set(_KEYS))
    require(not unknown, f"{label}: unknown key(s) {', '.join(map(str, unknown))}: valid keys are {', '.join(_KEYS)}")
    missing = [key for key in _REQUIRED_KEYS if key not in d]
    require(
        not missing,
        f"{label}: missing key(s) {', '.join(missing)}: add them (required: {', '.join(_REQUIRED_KEYS)})",
    )

    labels = _str_list(d, "labels", label)
    text_fields = _str_list(d, "text_fields", label)
    values = dict(
        name=_str(d, "name", label),
        kind=_str(d, "kind", label, default="custom"),
        text_fields=text_fields,
        labels=labels,
        label_words=_label_words(d["label_words"], label),
        label_descriptions=_str_list(
            d, "label_descriptions", label, default=[f"This example is {name.replace('_', ' ')}." for name in labels]
        ),
        template=_str(d, "template", label),
        instructions=_str_list(
            d, "instructions", label, default=[f"Which label fits this example: {', '.join(labels)}?"]
        ),
        hub_path=_str(d, "hub_path", label, default=None),
        hub_config=_str(d, "hub_config", label, default=None),
        hub_columns=_hub_columns(d.get("hub_columns", ()), label),
        hub_label_names=_str_list(d, "hub_label_names", label, default=None),
        train_split=_str(d, "train_split", label, default="train"),
        eval_split=_str(d, "eval_split", label, default="validation"),
        metric=_str(d, "metric", label, default="accuracy"),
    )
    return TaskSpec(**values)


def _str(d: dict, key: str, label: str, default: object = ...) -> str | None:
    if key not in d or (d[key] is None and default is None):
        require(default is not ..., f"{label}: missing key {key}")
        return default
    value = d[key]
    require(isinstance(value, str), f"{label}: {key} must be a string, got {value!r}")
    return value


def _str_list(d: dict, key: str, label: str, default: object = ...) -> list[str] | None:
    if key not in d or (d[key] is None and default is None):
        require(default is not ..., f"{label}: missing key {key}")
        return default
    value = d[key]
    if isinstance(value, str):
        value = [value]
    require(
        isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value),
        f"{label}: {key} must be a list of strings, got {value!r}",
    )
    return list(value)


def _label_words(value: object, label: str) -> list[tuple[str, ...]]:
    require(
        isinstance(value, (list, tuple)),
        f"{label}: label_words must be a list (one entry per label), got {value!r}",
    )
    words = []
    for entry in value:
        entry = [entry] if isinstance(entry, str) else entry
        require(
            isinstance(entry, (list, tuple)) and all(isinstance(word, str) for word in entry),
            f"{label}: label_words entry {entry!r} must be a word or a list of words",
        )
        words.append(tuple(entry))
    return words


def _hub_columns(value: object, label: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        value = list(value.items())
    require(
        isinstance(value, (list, tuple)),
        f"{label}: hub_columns must be a mapping or a list of pairs, got {value!r}",
    )
    pairs = []
    for pair in value:
        require(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair),
            f"{label}: hub_columns entry {pair!r} must be a [hub column, our field] pair",
        )
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


# ------------------------------------------------------------------------------------------ built-in tasks


def _builtin_tasks() -> list[TaskSpec]:
    """The built-in tasks: data (builtin_tasks.yaml, package data), read the way a user's task file is."""
    text = (Path(__file__).parent / "builtin_tasks.yaml").read_text(encoding="utf-8")
    return [task_from_dict(d) for d in yaml.safe_load(text)]


_BUILTIN_NAMES: set[str] = set()
for _spec in _builtin_tasks():
    register_task(_spec)
    _BUILTIN_NAMES.add(_spec.name)
