"""The prompt library on disk: a folder of prompts with metadata, its index, its recommendations, and the
`--init library:...` specs that name its entries. Pure file handling (no model, no engine), so the trainer can
resolve a library init without importing the recommending recipe (`recipes.library`).

Layout (`--library DIR`, default $DS_PROMPT_LIBRARY or ./prompt_library):
  DIR/library.json                 {"entries": {name: {task, backbone, family, d_model, prompt_length, accuracy,
                                                        source}}}
  DIR/<name>/prompt.safetensors    a copy of the artifact (+ prompt.json)
  DIR/recommendations/<task>--<model>.json and DIR/recommendation.json (the latest): the ranking of `recommend`.
`--init library:best` starts training from the top prompt of the latest recommendation (see
`resolve_library_init`); `--init library:<name>` from a named entry; `library:DIR#best` names the library.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ds_prompt.artifacts import META_FILE, PROMPT_FILE, load_prompt, save_prompt
from ds_prompt.config import InitSpec
from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path, write_json
from ds_prompt.models.backbone import canonical_model

LIBRARY_ENV, DEFAULT_LIBRARY = "DS_PROMPT_LIBRARY", "prompt_library"
INDEX_FILE, LATEST_RECOMMENDATION = "library.json", "recommendation.json"


def library_dir(library: str | None = None) -> Path:
    return Path(library or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


def read_index(library: str | None = None) -> dict:
    path = library_dir(library) / INDEX_FILE
    if not path.is_file():
        return {"entries": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"library index '{path}' is not valid JSON ({exc.msg}): restore or delete it") from None


def add_to_library(prompt: str, library: str | None = None, name: str | None = None,
                   overwrite: bool = False) -> dict:
    """Copy the artifact `prompt` into the library as `name` (default: its task, then its folder name)."""
    tensor, meta, _ = load_prompt(prompt)
    src = Path(prompt) if Path(prompt).is_dir() else Path(prompt).parent
    name = name or meta.get("task") or src.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"library entry name '{name}' must be letters, digits, '-', '_' or '.': pass --name")
    root = library_dir(library)
    index = read_index(library)
    if name in index["entries"] and not overwrite:
        raise UserError(f"library {root} already has '{name}': pass --name OTHER or --overwrite")
    with atomic_path(root / name) as tmp:
        tmp.mkdir(parents=True)
        for file in (PROMPT_FILE, META_FILE):
            if (src / file).is_file():
                shutil.copy2(src / file, tmp / file)
        if not (tmp / PROMPT_FILE).is_file():  # a PEFT adapter: store it in our format
            save_prompt(tmp, tensor, meta)
    entry = {"task": meta.get("task"), "backbone": meta.get("backbone"), "family": meta.get("family"),
             "d_model": int(tensor.shape[1]), "prompt_length": int(tensor.shape[0]),
             "accuracy": (meta.get("metrics") or {}).get("accuracy"), "source": str(prompt)}
    index["entries"][name] = entry
    write_json(root / INDEX_FILE, index)
    return {"name": name, **entry}


def library_entries(library: str | None = None, task: str | None = None, model: str | None = None) -> list[dict]:
    """Entries (with `name` and `path`), optionally only those of `task` / trained on `model`."""
    root = library_dir(library)
    rows = [{"name": n, "path": str(root / n), **e} for n, e in sorted(read_index(library)["entries"].items())]
    model = canonical_model(model)
    return [r for r in rows if (task is None or r["task"] == task)
            and (model is None or canonical_model(r["backbone"]) == model)]


def _pair_slug(task: str, model: str) -> str:
    model = canonical_model(model)  # `./m.gguf` and its absolute spelling share recommendations and probes
    return f"{task}--{model.replace('/', '_').replace(':', '_')}"


def _recommendation_path(root: Path, task: str, model: str) -> Path:
    return root / "recommendations" / f"{_pair_slug(task, model)}.json"


def save_recommendation(library: str | None, task: str, model: str, ranking: list[dict], metric: str) -> Path:
    """Store a ranking (best first) for `task` on `model`, and as the library's latest recommendation."""
    root = library_dir(library)
    record = {"task": task, "model": model, "metric": metric, "ranking": ranking}
    write_json(_recommendation_path(root, task, model), record)
    write_json(root / LATEST_RECOMMENDATION, record)
    return _recommendation_path(root, task, model)


def _load_recommendation(root: Path, task: str | None, model: str | None) -> dict:
    path = _recommendation_path(root, task, model) if task and model else root / LATEST_RECOMMENDATION
    if not path.is_file():
        raise UserError(f"library {root} has no recommendation{f' for {task} on {model}' if task else ''}: run "
                        f"`ds-prompt transfer library recommend --library {root} --task T --model M` first")
    return json.loads(path.read_text())


def resolve_library_init(spec: InitSpec | str, task: str | None = None, model: str | None = None) -> str:
    """Path of the prompt artifact named by `library:[DIR#]best|<name>` (for `--init`).

    `best` is the top prompt of the recommendation for `task` on `model` when both are given, else of the
    library's latest recommendation. DIR defaults to $DS_PROMPT_LIBRARY or ./prompt_library.
    """
    spec = InitSpec.parse(spec)
    if spec.kind != "library":
        raise UserError(f"--init '{spec}' is not a library spec: use library:best or library:<entry name>")
    folder, _, entry = spec.arg.rpartition("#")
    root = library_dir(folder or None)
    if entry == "best":
        ranking = _load_recommendation(root, task, model)["ranking"]
        if not ranking:
            raise UserError(f"the recommendation in library {root} is empty: add prompts for this model")
        entry = ranking[0]["name"]
    if entry not in read_index(str(root))["entries"]:
        known = ", ".join(sorted(read_index(str(root))["entries"])) or "none"
        raise UserError(f"library {root} has no entry '{entry}' (entries: {known}): `ds-prompt transfer library "
                        f"add` it")
    return str(root / entry)
