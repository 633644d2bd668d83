"""FPT on SmolLM2-135M (30 layers, gated FFN 1536): plain PT (plan pt) vs progressive layer dropping (ld),
FFN reduction (fr) and both (cr), on sst2 and agnews, same seed, data order and total steps.

Every run evaluates every EVAL_EVERY steps, so the report of `ds-prompt fpt` (pt_comparison, computed
against the pt run with --pt_reference) gives PT's accuracy at the plan's FLOPs and the FLOPs the plan needed
to first reach PT's final accuracy. Uniform init (the FPT paper's setting). FLOPs include the neuron-scoring
forwards of fr and cr (the report's training_flops_fraction leaves them out). Writes docs/results/fpt.csv and
fpt.png (accuracy over FLOPs).

    python examples/smollm2/fpt.py [--no-train]   # --no-train: tabulate the runs finished so far, start none
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    DATA,
    LR,
    MODEL,
    RESULTS,
    RUNS,
    SAVE_EVERY,
    archive,
    cli,
    figure,
    finish_axes,
    log,
    meta_json,
    read_json,
    restore,
    save_figure,
    write_csv,
)

TASKS, PLANS = ("sst2", "agnews"), ("pt", "ld", "fr", "cr")
STEPS, EVAL_EVERY, EVAL, SEED = 250, 25, 500, 42
# Machine state of a finished run whose wall time is not a measurement (FLOPs and accuracies are unaffected).
# Keyed by the recorded wall seconds too, so a re-timed run (delete its folder and archive) loses the note.
WALL_VOID = {("agnews", "pt", 1683): "void: the run was paused ~16 min for a CI run (2026-12-02)",
             ("agnews", "fr", 2141): "~1 min of unit tests overlapped it (2026-12-03)"}


def run(task: str, plan: str, train: bool = True) -> dict | None:
    """The plan's fpt_report.json, running the plan first if it is not finished (None: unfinished, train=False)."""
    out = RUNS / "fpt" / task / plan
    report = read_json(out / "fpt_report.json")
    if report is not None and "training_flops_fraction" not in report and train:
        # written before neuron scoring was counted: `ds-prompt fpt` on the finished plan only rebuilds the report
        report = None
    if report is None and train:
        extra = () if plan == "pt" else ("--pt_reference", RUNS / "fpt" / task / "pt")
        cli("fpt", "--plan", plan, "--model", MODEL, "--task", task, "--data_dir", DATA, "--output_dir", out,
            "--max_steps", STEPS, "--lr", LR, "--seed", SEED, "--init", "uniform", "--eval_every", EVAL_EVERY,
            "--eval_limit", EVAL, "--save_every", SAVE_EVERY, "--progress", "False", *extra)
        report = read_json(out / "fpt_report.json")
        archive(out)
    return report


def plot(reports: dict, path: Path) -> None:
    fig, axes = figure(len(TASKS), (5.5, 4))
    for ax, task in zip(axes, TASKS):
        if not any(reports[task].values()):
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"FPT on {MODEL}: {task}")
            continue
        for plan in PLANS:
            if reports[task].get(plan) is None:
                continue
            curve = reports[task][plan]["curve"]
            ax.plot([p["flops"] / 1e15 for p in curve], [p["accuracy"] for p in curve], marker="o", ms=2.5,
                    label=plan)
        finish_axes(ax, "PFLOPs spent (analytic; training + neuron scoring)",
                    "eval accuracy (partial model before the last stage)", f"FPT on {MODEL}: {task}")
    save_figure(fig, path)


def main(train: bool = True) -> None:
    restore()
    reports = {task: {plan: run(task, plan, train) for plan in PLANS} for task in TASKS}
    rows = []
    for task in TASKS:
        for plan in PLANS:
            r = reports[task][plan]
            if r is None:
                continue
            c = r["pt_comparison"]
            reach = c["plan_flops_to_pt_final_fraction"]
            rows.append({"task": task, "plan": plan, "accuracy": round(r["accuracy"], 4),
                         "flops_fraction": round(r["flops_fraction"], 3),
                         "training_flops_fraction": round(r.get("training_flops_fraction", r["flops_fraction"]), 3),
                         "scoring_samples": (r.get("scoring") or {}).get("samples", 0),
                         "pt_accuracy_at_equal_flops": round(c["pt_accuracy_at_equal_flops"], 4),
                         "pt_final_accuracy": round(c["pt_final_accuracy"], 4),
                         "flops_to_pt_final_fraction": "" if reach is None else round(reach, 3),
                         "wall_s": round(r["wall_s"]), "wall_note": WALL_VOID.get((task, plan, round(r["wall_s"])), ""),
                         "steps": r["total_steps"], "n_eval": EVAL})
    write_csv(RESULTS / "fpt.csv", rows)
    plot(reports, RESULTS / "fpt.png")
    meta_json("fpt", steps=STEPS, eval_every=EVAL_EVERY, eval_limit=EVAL, seed=SEED, init="uniform", lr=LR,
              plans={"ld": "depth 25/50/75/100%", "fr": "FFN width 25/50/75/100%", "cr": "both",
                     "steps": "20/20/20/40%"})
    log("fpt done")


if __name__ == "__main__":
    main(train="--no-train" not in sys.argv)
