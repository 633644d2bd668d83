"""Shared plumbing of the SmolLM2 evidence scripts: resumable CLI runs, CSV rows, machine state.

Every experiment script under examples/smollm2/ drives the `ds-prompt` CLI (the path users take), writes its
runs under $EVIDENCE_RUNS (default runs/smollm2) and its tables under docs/results/. A finished run (its
metrics.json reached the requested step) is skipped; an interrupted one resumes from its last checkpoint,
because every run saves its trainable state every SAVE_EVERY steps. Re-running a script after a crash, or in
a later session, therefore only does the missing work.

Runs folders are scratch (ignored by git, gone on a fresh checkout). So every finished part is also
archived: its small result files (json, csv, safetensors; no checkpoints, no TensorBoard) are copied to
$EVIDENCE_ARCHIVE (default docs/results/smollm2_runs/, committed), and `restore()` copies them back into an
empty runs folder. A fresh clone therefore resumes the evidence where the last commit left it.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the scripts and the runs they start import the ds_prompt of this checkout (a worktree, a fresh clone), never
# whatever another checkout's editable install points at
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = os.environ.get("DATA", str(ROOT.parent / "shared" / "data"))
RUNS = Path(os.environ.get("EVIDENCE_RUNS", ROOT / "runs" / "smollm2"))
RESULTS = ROOT / "docs" / "results"
MODEL = os.environ.get("EVIDENCE_MODEL", "smollm2")
# One recipe for every SmolLM2 run unless a script says otherwise (see README "Evidence on SmolLM2").
STEPS = int(os.environ.get("STEPS", 250))
LR = os.environ.get("LR", "1e-2")
EVAL_LIMIT = int(os.environ.get("EVAL_LIMIT", 1000))
# Prompts start from sampled vocabulary embeddings (Lester et al. 2021): on SmolLM2 an N(0, 0.02) prompt, 7x
# smaller than its token embeddings (row norm 0.5 vs 3.2), left mr at chance after 250 steps (0.510 -> 0.516)
# while the vocab-init probe's loss fell from the start (runs/smollm2/normal_init/ keeps those runs).
INIT = os.environ.get("INIT", "vocab")
SAVE_EVERY = 25
# EVIDENCE_SEEDS=42 runs (and tabulates) a first seed only, so every experiment has a number before the
# slower multi-seed passes; the first seed must stay 42 (the transfer experiments read seed 42's prompts).
PLANNED_SEEDS = (42, 43, 44)
SEEDS = tuple(int(s) for s in os.environ.get("EVIDENCE_SEEDS", ",".join(map(str, PLANNED_SEEDS))).split(","))
if SEEDS[0] != 42:
    raise SystemExit(f"EVIDENCE_SEEDS must start with 42 (got {SEEDS}): transfer reads seed 42's prompts")
ARCHIVE = Path(os.environ.get("EVIDENCE_ARCHIVE", RESULTS / "smollm2_runs"))
_ARCHIVED = (".json", ".csv", ".safetensors")  # a finished part's results; checkpoints and tb/ stay scratch
_SCRATCH = ("checkpoints", "tb")
_MAX_BYTES = 4 << 20


def log(text: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {text}", flush=True)


def cli(*args: str) -> None:
    """Run `ds-prompt ARGS` (same interpreter), failing loudly: evidence must never hide a crash."""
    cmd = [sys.executable, "-m", "ds_prompt.cli", *map(str, args)]
    if os.environ.get("EVIDENCE_NO_TRAIN"):  # tabulating finished parts only (e.g. while run_all.sh runs elsewhere)
        raise SystemExit("EVIDENCE_NO_TRAIN is set, not running: ds-prompt " + " ".join(map(str, args)))
    log("$ ds-prompt " + " ".join(map(str, args)))
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def _result_files(folder: Path):
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if (path.is_file() and path.suffix in _ARCHIVED and not set(rel.parts) & set(_SCRATCH)
                and not path.name.startswith(".") and path.stat().st_size <= _MAX_BYTES):
            yield path, rel


def archive(out: Path) -> None:
    """Copy the result files of the finished part in `out` (under RUNS) to ARCHIVE (committed)."""
    out = Path(out)
    dest = ARCHIVE / out.relative_to(RUNS)
    for path, rel in _result_files(out):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != path.read_bytes():
            shutil.copy2(path, target)


def restore() -> int:
    """Copy archived results into RUNS where RUNS lacks them (a fresh checkout); how many files were copied."""
    copied = 0
    if ARCHIVE.is_dir():
        for path, rel in _result_files(ARCHIVE):
            target = RUNS / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
    return copied


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished(out: Path, steps: int) -> dict | None:
    """metrics.json of a run in `out` that reached `steps`, else None."""
    metrics = read_json(Path(out) / "metrics.json")
    return metrics if metrics and metrics.get("steps") == steps else None


def train(out: Path, task: str, seed: int, steps: int = STEPS, eval_every: int | None = None,
          eval_limit: int = EVAL_LIMIT, init: str = INIT, extra: tuple = ()) -> dict:
    """A prompt-tuning run on MODEL (skipped when finished, resumed when interrupted); its metrics."""
    done = finished(out, steps)
    if not done:
        cli("train", "--model", MODEL, "--task", task, "--data_dir", DATA, "--output_dir", out, "--seed", seed,
            "--max_steps", steps, "--lr", LR, "--init", init, "--eval_limit", eval_limit, "--eval_every",
            steps // 2 if eval_every is None else eval_every, "--save_every", SAVE_EVERY, "--progress", "False",
            *extra)
        done = finished(out, steps)
    if done:
        archive(out)
    return done


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    log(f"wrote {_shown(path)} ({len(rows)} rows)")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# the majority-class floor: its row's mode in a results CSV (spt.csv) and its label in tables and plots
MAJORITY, MAJORITY_LABEL = "majority", "majority class"


def mode_label(mode: str) -> str:
    """A results row's mode as tables and plots show it."""
    return MAJORITY_LABEL if mode == MAJORITY else mode


def majority_rate(task: str, seed: int, limit: int, n_eval: int) -> float:
    """Accuracy of always predicting the most common label on a run's eval subset (the trainers' subset rule,
    `eval_subset(limit, seed)`): the floor a prompt must beat to have learned anything."""
    from ds_prompt.data.loading import load_examples
    from ds_prompt.data.tasks import get_task
    examples = load_examples(get_task(task), "eval", DATA, limit=limit, seed=seed)
    assert len(examples) == n_eval, (task, len(examples), n_eval)  # the same subset the run evaluated
    return Counter(e.label for e in examples).most_common(1)[0][1] / len(examples)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def today() -> str:
    return _dt.date.today().isoformat()


def machine() -> str:
    """One line of machine state, recorded next to timings."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} {os.cpu_count()} cores, load {load:.1f}"


def figure(ncols: int = 1, size: tuple[float, float] = (6.5, 4)):
    """(figure, axes) of a headless matplotlib figure; `save_figure` writes and closes it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]))


def finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def grouped_bars(groups: list[str], series: dict[str, list[tuple[float, float] | None]], path: Path, title: str,
                 ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """One cluster of bars per group, one bar per series, each (mean, standard error) with its error bar;
    None leaves a gap (not run yet)."""
    fig, ax = figure(size=(max(6.5, 0.9 * len(groups) * max(1, len(series)) / 2 + 2), 4))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        shown = [v for v in values if v is not None]
        errors = [se for _, se in shown]
        ax.bar(xs, [m for m, _ in shown], width, yerr=errors if any(errors) else None, capsize=2, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 5 else 0)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {_shown(path)}")


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def meta_json(name: str, **facts) -> None:
    """docs/results/<name>.json: the recipe behind a CSV (model, steps, seeds, n, date, ...)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    facts = dict(model=MODEL, date=today(), machine=machine(), **facts)
    (RESULTS / f"{name}.json").write_text(json.dumps(facts, indent=2) + "\n")
