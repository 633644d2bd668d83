"""Sets of prompt artifacts, and the prompt library: a folder of prompts with metadata, ranked for a new task.

A prompt set is given as a comma list of artifact paths, or one folder (an artifact itself, or holding artifact
sub-folders). Each prompt gets a short `name`: the task it was trained on, or its folder name when two prompts
share a task (names label the rows/columns of matrices and indicator tables).

Library layout (`--library DIR`, default $DS_PROMPT_LIBRARY or ./prompt_library):
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.artifacts import META_FILE, PROMPT_FILE, load_prompt, save_prompt
from ds_prompt.builders import load_model_for
from ds_prompt.config import TrainConfig, build_config
from ds_prompt.engine import setup as ds_setup
from ds_prompt.engine.trainer import train
from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path, write_json
from ds_prompt.models.heads import HEAD_KINDS

LIBRARY_ENV, DEFAULT_LIBRARY = "DS_PROMPT_LIBRARY", "prompt_library"
INDEX_FILE, LATEST_RECOMMENDATION = "library.json", "recommendation.json"


# ---- prompt sets ---------------------------------------------------------------------------------------------
@dataclass
class PromptRef:
    """A loaded prompt artifact: `tensor` [L, d] fp32, its prompt.json `meta`, extra tensors (linear head)."""
    name: str
    path: str
    tensor: torch.Tensor
    meta: dict
    extra: dict

    @property
    def backbone(self) -> str | None:
        return self.meta.get("backbone")

    @property
    def task(self) -> str | None:
        return self.meta.get("task")


def as_list(value) -> list[str]:
    """A flag given as 'a,b', ('a', 'b') (fire parses bare comma lists to tuples) or a single value."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _is_artifact(path: Path) -> bool:
    return path.is_file() or (path / PROMPT_FILE).is_file() or (path / "adapter_model.safetensors").is_file()


def prompt_paths(spec) -> list[str]:
    """Artifact paths from a comma list, or from one folder (an artifact, or holding artifact sub-folders)."""
    items = as_list(spec)
    if not items:
        raise UserError("--prompts is empty: pass a folder of prompt artifacts or P1,P2,...")
    if len(items) == 1 and Path(items[0]).is_dir() and not _is_artifact(Path(items[0])):
        children = sorted(str(p) for p in Path(items[0]).iterdir() if p.is_dir() and _is_artifact(p))
        if not children:
            raise UserError(f"--prompts folder '{items[0]}' holds no prompt artifacts (sub-folders with "
                            f"{PROMPT_FILE}): pass P1,P2,... or a folder of trained runs")
        return children
    return items


def load_prompt_set(spec) -> list[PromptRef]:
    """Every prompt of `spec` (see `prompt_paths`), named by task, or by folder where tasks repeat."""
    loaded = [(path, *load_prompt(path)) for path in prompt_paths(spec)]
    tasks = [meta.get("task") for _, _, meta, _ in loaded]
    refs = []
    for path, tensor, meta, extra in loaded:
        task = meta.get("task")
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        name = task if task and tasks.count(task) == 1 else folder.name
        refs.append(PromptRef(name, str(path), tensor, meta, extra))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise UserError(f"prompts share names {sorted({n for n in names if names.count(n) > 1})}: put each "
                        f"prompt in a folder of its own name")
    return refs


def common_backbone(prompts: list[PromptRef], model: str | None = None) -> str:
    """The one backbone all `prompts` were trained on, or `model` when given."""
    if model:
        return model
    names = sorted({p.backbone for p in prompts if p.backbone})
    if len(names) != 1:
        found = ", ".join(names) or "none recorded"
        raise UserError(f"prompts come from backbones ({found}): pass --model M, after mapping foreign prompts "
                        f"with `ds-prompt projector apply`")
    return names[0]


def recorded_family(prompts: list[PromptRef], model: str | None = None) -> str | None:
    """The family recorded with the prompts (None: auto-detect, also whenever --model overrides the backbone)."""
    return None if model else prompts[0].meta.get("family")


def head_kind(meta: dict) -> str:
    """The head kind (label_words, similarity, linear; else auto) recorded in a prompt's metadata."""
    return HEAD_KINDS.get(meta.get("head", ""), "auto")


# ---- the library ---------------------------------------------------------------------------------------------
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
    return [r for r in rows if (task is None or r["task"] == task) and (model is None or r["backbone"] == model)]


def _pair_slug(task: str, model: str) -> str:
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
                        f"`ds-prompt library recommend --library {root} --task T --model M` first")
    return json.loads(path.read_text())


def resolve_library_init(spec: str, task: str | None = None, model: str | None = None) -> str:
    """Path of the prompt artifact named by `library:[DIR#]best|<name>` (for `--init`).

    `best` is the top prompt of the recommendation for `task` on `model` when both are given, else of the
    library's latest recommendation. DIR defaults to $DS_PROMPT_LIBRARY or ./prompt_library.
    """
    kind, _, arg = str(spec).partition(":")
    if kind != "library" or not arg:
        raise UserError(f"--init '{spec}' is not a library spec: use library:best or library:<entry name>")
    folder, _, entry = arg.rpartition("#")
    root = library_dir(folder or None)
    if entry == "best":
        ranking = _load_recommendation(root, task, model)["ranking"]
        if not ranking:
            raise UserError(f"the recommendation in library {root} is empty: add prompts for this model")
        entry = ranking[0]["name"]
    if entry not in read_index(str(root))["entries"]:
        known = ", ".join(sorted(read_index(str(root))["entries"])) or "none"
        raise UserError(f"library {root} has no entry '{entry}' (entries: {known}): `ds-prompt library add` it")
    return str(root / entry)


# ---- recommending library prompts for a task -----------------------------------------------------------------
def _pair_indicators(probe: PromptRef, entry: PromptRef, probe_masks, entry_masks) -> dict:
    """Every indicator of (entry, probe) that applies: flattened ones only for equal shapes."""
    # imported here: indicators imports this module
    from ds_prompt.transfer.indicators import EMBEDDING_INDICATORS, activated_neuron_overlap
    values = {}
    for metric, fn in EMBEDDING_INDICATORS.items():
        if metric.endswith("_token") or entry.tensor.shape == probe.tensor.shape:
            values[metric] = fn(entry.tensor, probe.tensor)
    values["on"] = activated_neuron_overlap(entry_masks, probe_masks)
    return values


def train_probe(task: str, model: str, output_dir: str, prompt_length: int, **train_flags) -> PromptRef:
    """A short prompt-tuning run on `task` (reused when `output_dir` already holds its artifact)."""
    if not (Path(output_dir) / PROMPT_FILE).is_file():
        flags = dict(dict(max_steps=50, eval_every=0, save_every=0, progress=False), **train_flags)
        train(build_config(TrainConfig, None, model=model, task=task, output_dir=output_dir,
                           prompt_length=prompt_length, resume=False, **flags))
    tensor, meta, extra = load_prompt(output_dir)
    return PromptRef("probe", output_dir, tensor, meta, extra)


def recommend(task: str, model: str, library: str | None = None, metric: str = "on", probe_dir: str | None = None,
              probe=None, deepspeed: str | None = None, dtype: str = "auto", **train_flags) -> list[dict]:
    """Rank the library's prompts for `model` by `metric` against a short probe prompt trained on `task`.

    Returns rows {rank, name, task, <every applicable indicator>} best first and stores them as the library's
    recommendation (for `--init library:best`). `train_flags` go to the probe run (data_dir, max_steps, lr...);
    `deepspeed` to the probe run and to the activation recorder.
    """
    from ds_prompt.transfer.indicators import METRICS, NeuronProbe, NeuronRecorder  # (see _pair_indicators)
    if metric not in METRICS:
        raise UserError(f"--metric '{metric}' is unknown: use one of {', '.join(METRICS)}")
    entries = library_entries(library, model=model)
    if not entries:
        raise UserError(f"library {library_dir(library)} has no prompts trained on {model}: `ds-prompt library "
                        f"add` some, or map foreign prompts with `ds-prompt projector apply` first")
    length = Counter(e["prompt_length"] for e in entries).most_common(1)[0][0]
    root = library_dir(library)
    probe_dir = probe_dir or str(root / "probes" / _pair_slug(task, model))
    probe_ref = train_probe(task, model, probe_dir, length, deepspeed=deepspeed, **train_flags)
    ds_setup.init_distributed()
    recorder = NeuronRecorder(load_model_for(model, dtype=dtype), probe or NeuronProbe(), length, deepspeed)
    probe_masks = recorder.masks(probe_ref.tensor)
    rows = []
    for e in entries:
        tensor, meta, extra = load_prompt(e["path"])
        ref = PromptRef(e["name"], e["path"], tensor, meta, extra)
        rows.append({"name": e["name"], "task": e["task"],
                     **_pair_indicators(probe_ref, ref, probe_masks, recorder.masks(tensor))})
    rows.sort(key=lambda r: r.get(metric, float("-inf")), reverse=True)
    ranking = [{"rank": i + 1, **r} for i, r in enumerate(rows)]
    dist.on_rank0(save_recommendation, library, task, model, ranking, metric)
    return ranking
