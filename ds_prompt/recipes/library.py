"""The library recipe (`ds-prompt transfer library recommend`): rank a prompt library's entries for a new task
by a short probe run, then indicators (ON by default) of the probe against every entry.

The library folder itself (index, entries, recommendations, `--init library:` specs) is
`transfer.library_index`; prompt sets are `transfer.prompt_set`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ds_prompt import dist
from ds_prompt.artifacts import PROMPT_FILE, load_prompt
from ds_prompt.builders import load_model_for
from ds_prompt.config import TrainConfig, build_config
from ds_prompt.engine import setup as ds_setup
from ds_prompt.errors import UserError
from ds_prompt.recipes.prompt_tuning import train
from ds_prompt.transfer.indicators import (
    EMBEDDING_INDICATORS,
    METRICS,
    NeuronProbe,
    NeuronRecorder,
    activated_neuron_overlap,
)
from ds_prompt.transfer.library_index import _pair_slug, library_dir, library_entries, save_recommendation
from ds_prompt.transfer.prompt_set import PromptRef


def _pair_indicators(probe: PromptRef, entry: PromptRef, probe_masks, entry_masks) -> dict:
    """Every indicator of (entry, probe) that applies: flattened ones only for equal shapes."""
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
    if metric not in METRICS:
        raise UserError(f"--metric '{metric}' is unknown: use one of {', '.join(METRICS)}")
    entries = library_entries(library, model=model)
    if not entries:
        raise UserError(f"library {library_dir(library)} has no prompts trained on {model}: `ds-prompt transfer "
                        f"library add` some, or map foreign prompts with `ds-prompt transfer projector apply` first")
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
