"""The FPT report: compute against plain PT, the accuracy curve over FLOPs, and the comparison with a PT run.

`build_report` turns the ledger's stage records into D/fpt_report.json. `compare_with_pt` answers the two
questions behind the paper's claim (same accuracy, less compute), from a plain PT run of the same model, task,
seed and data order:
- PT's accuracy at equal FLOPs: PT's accuracy at the step s* where it has spent what the whole plan spent
  (s* = plan FLOPs / PT FLOPs per step), read off PT's evaluation curve (linear between evaluations, and the
  last evaluation at or before s*);
- the FLOPs the plan needed to first reach PT's final accuracy, counting only evaluations of the full model
  (a prompt is only usable on the full model; partial-model accuracies are not the deliverable).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ds_prompt.errors import UserError
from ds_prompt.models.backbone import canonical_model

PROMPT_META, METRICS, REPORT = "prompt.json", "metrics.json", "fpt_report.json"


def build_report(plan, records: list[dict], backward: str, reset_optimizer: bool, scoring: dict | None = None) -> dict:
    """FPT compute vs a plain PT run of the same steps (full model throughout), and measured wall time.

    `scoring` ({stage, samples, ranks, flops}): the forwards that scored the FFN neurons of a width-reduced plan
    (at the start of stage `stage`). They are part of the plan's compute: `flops` and `flops_fraction` include
    them, `training_flops_fraction` leaves them out (the paper's accounting, whose ~1000 scoring samples are
    negligible next to 30k steps but not next to a few hundred)."""
    total = plan.total_steps
    training = sum(r["flops"] for r in records)
    fpt = training + (scoring["flops"] if scoring else 0.0)
    pt = sum(r["steps"] * r["full_flops_per_step"] for r in records)
    layer_fpt = sum(r["steps"] * r["layer_flops_per_step"] for r in records)
    layer_pt = sum(r["steps"] * r["layer_full_flops_per_step"] for r in records)
    full_stages = [r for r in records if r["full_model"] and r["train_s_per_step"]]
    wall_fraction = None
    if full_stages and all(r["train_s_per_step"] for r in records):
        full_s = full_stages[-1]["train_s_per_step"]
        wall_fraction = sum(r["steps"] * r["train_s_per_step"] for r in records) / (total * full_s)
    return {
        "flops_fraction": fpt / pt, "training_flops_fraction": training / pt, "scoring": scoring,
        "layer_flops_fraction": layer_fpt / layer_pt, "flops": fpt, "pt_flops": pt,
        "full_flops_per_step": records[-1]["full_flops_per_step"], "total_steps": total,
        "backward_convention": backward,
        "wall_fraction_estimate": wall_fraction, "wall_s": sum(r["wall_s"] for r in records),
        "accuracy": records[-1]["accuracy"], "reset_optimizer": reset_optimizer,
        "curve": flops_curve(records, reset_optimizer, scoring),
        "stages": records, "plan": plan.to_dict(),
        "notes": "flops: analytic matmul FLOPs (ds_prompt.fpt.flops), training plus neuron scoring (scoring: "
                 "samples x ranks plain forwards of the full model; training_flops_fraction leaves them out; "
                 "layer_flops_fraction is training only); wall_fraction_estimate: sum of each "
                 "stage's measured s/step x steps over total steps x the full-model stage's s/step; curve: "
                 "every evaluation with the FLOPs spent so far (full_model: evaluated on the full model)",
    }


def _scoring_flops(scoring: dict | None, index: int) -> float:
    """The neuron-scoring FLOPs spent at the start of stage `index` (0 for every other stage)."""
    return scoring["flops"] if scoring and scoring["stage"] == index else 0.0


def flops_curve(records: list[dict], reset_optimizer: bool = False, scoring: dict | None = None) -> list[dict]:
    """[{step, flops, accuracy, full_model}] over the whole plan: the untrained prompt at step 0, then every
    evaluation of every stage (its history, which a stage inherits from the previous one, is cut to its own
    steps) and each stage's final evaluation. Neuron scoring (`scoring`, see build_report) is spent at the
    start of its stage, before the stage's first training step."""
    points = [{"step": 0, "flops": 0.0, "accuracy": records[0]["accuracy_before"],
               "full_model": records[0]["full_model"]}]
    spent = 0.0
    for r in records:
        spent += _scoring_flops(scoring, r["index"])
        offset = r["start_step"] if reset_optimizer and r["index"] > 0 else 0  # a reset stage counts from 0
        evals = {h["step"] + offset: h["accuracy"] for h in r.get("history", [])}
        evals[r["end_step"]] = r["accuracy"]
        for step in sorted(s for s in evals if r["start_step"] < s <= r["end_step"]):
            points.append({"step": step, "flops": spent + (step - r["start_step"]) * r["flops_per_step"],
                           "accuracy": evals[step], "full_model": r["full_model"]})
        spent += r["flops"]
    return points


def _reference_curve(reference: Path, report: dict, own_root: Path) -> list[dict]:
    """PT's [{step, flops, accuracy}] from a `ds-prompt train` folder or a one-stage full-model FPT folder."""
    if reference.resolve() == own_root.resolve():
        return report["curve"]
    ref_report = _read(reference / REPORT) if (reference / REPORT).is_file() else None
    if ref_report is not None:
        if not all(s["full_model"] for s in ref_report["stages"]):
            raise UserError(f"--pt_reference {reference} is an FPT run with partial-model stages: pass a plain PT "
                            f"run (`ds-prompt train` or `ds-prompt fpt --plan pt`)")
        return ref_report["curve"]
    metrics = _read(reference / METRICS)
    per_step = report["full_flops_per_step"]
    evals = {0: metrics["accuracy_before"], **{h["step"]: h["accuracy"] for h in metrics.get("history", [])},
             metrics["steps"]: metrics["accuracy"]}
    return [{"step": s, "flops": s * per_step, "accuracy": evals[s], "full_model": True} for s in sorted(evals)]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--pt_reference: cannot read '{path}' ({type(exc).__name__}): pass a finished PT run's "
                        f"--output_dir") from None


def check_reference(reference: str, cfg) -> None:
    """UserError unless `reference` is a finished PT run of the same backbone, task and seed as `cfg`."""
    meta = _read(Path(reference) / PROMPT_META)
    for key, want in (("backbone", cfg.model), ("task", cfg.task), ("seed", cfg.seed)):
        got = canonical_model(meta.get(key)) if key == "backbone" else meta.get(key)
        if got != (canonical_model(want) if key == "backbone" else want):
            raise UserError(f"--pt_reference {reference} was trained with {key} {meta.get(key)!r}, this run uses "
                            f"{want!r}: compare with a PT run of the same model, task, seed and data order")


def _interpolate(curve: list[dict], step: float) -> float | None:
    for a, b in zip(curve, curve[1:]):
        if a["step"] <= step <= b["step"]:
            t = (step - a["step"]) / max(b["step"] - a["step"], 1e-12)
            return a["accuracy"] + t * (b["accuracy"] - a["accuracy"])
    return curve[-1]["accuracy"] if curve and step == curve[-1]["step"] else None


def compare_with_pt(report: dict, reference: str | Path, cfg) -> dict:
    """The plan against plain PT at equal FLOPs, and the FLOPs the plan needed to reach PT's final accuracy."""
    reference, own_root = Path(reference), Path(cfg.resolved_output_dir())
    if reference.resolve() != own_root.resolve():
        check_reference(str(reference), cfg)
    pt_curve = _reference_curve(reference, report, own_root)
    per_step = report["full_flops_per_step"]
    equal_step = report["flops"] / per_step
    at_or_below = [p for p in pt_curve if p["step"] <= equal_step + 1e-9]
    pt_final = pt_curve[-1]
    reached = next((p for p in report["curve"] if p["full_model"] and p["accuracy"] >= pt_final["accuracy"]), None)
    pt_flops = pt_final["step"] * per_step
    return {
        "pt_reference": str(reference),
        "pt_steps": pt_final["step"], "pt_flops": pt_flops, "pt_final_accuracy": pt_final["accuracy"],
        "plan_flops": report["flops"], "plan_accuracy": report["accuracy"],
        "equal_flops_step": equal_step,
        "pt_accuracy_at_equal_flops": _interpolate(pt_curve, equal_step),
        "pt_evaluated_step_at_equal_flops": at_or_below[-1]["step"] if at_or_below else None,
        "pt_evaluated_accuracy_at_equal_flops": at_or_below[-1]["accuracy"] if at_or_below else None,
        "plan_flops_to_pt_final_accuracy": reached["flops"] if reached else None,
        "plan_step_to_pt_final_accuracy": reached["step"] if reached else None,
        "plan_flops_to_pt_final_fraction": reached["flops"] / pt_flops if reached and pt_flops else None,
        "pt_evaluations": len(pt_curve),
    }


def write_tensorboard(root: Path, report: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter
    tb = root / "tb"
    if tb.is_dir():  # rewritten from the ledger on every report: no duplicate points after a re-run
        shutil.rmtree(tb)
    writer = SummaryWriter(str(tb))
    cumulative, scoring = 0.0, report.get("scoring")
    for r in report["stages"]:
        cumulative += r["flops"] + _scoring_flops(scoring, r["index"])
        pt_so_far = sum(s["steps"] * s["full_flops_per_step"] for s in report["stages"][:r["index"] + 1])
        for step in (r["start_step"] + 1, r["end_step"]):
            writer.add_scalar("fpt/stage_flops_per_step", r["flops_per_step"], step)
            writer.add_scalar("fpt/stage_layers", sum(r["layers"].values()), step)
            writer.add_scalar("fpt/stage_width", r["width"], step)
        writer.add_scalar("fpt/flops_cumulative", cumulative, r["end_step"])
        writer.add_scalar("fpt/flops_fraction", cumulative / pt_so_far, r["end_step"])
        writer.add_scalar("fpt/stage_wall_s", r["wall_s"], r["end_step"])
        writer.add_scalar("fpt/accuracy", r["accuracy"], r["end_step"])
    for point in report["curve"]:
        writer.add_scalar("fpt/accuracy_by_gflops", point["accuracy"], int(point["flops"] / 1e9))
    writer.flush()
    writer.close()
