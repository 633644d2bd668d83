"""The FPT report's claim numbers: the accuracy curve over FLOPs, PT's accuracy at equal FLOPs and the FLOPs a
plan needs to reach PT's final accuracy (hand-computed), and `ds-prompt fpt` end to end through the CLI with a
linear schedule (whose schedule_steps once reached the stage job as a string)."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ds_prompt.errors import UserError
from ds_prompt.fpt.report import compare_with_pt, flops_curve
from tests.helpers import REPO, subprocess_env


def _records():
    """Stage 0: steps 0->4 on a partial model (1 FLOP/step); stage 1: steps 4->8 on the full model (4/step).
    Stage 1's history inherits stage 0's evaluation at step 2 (the trainer carries history across stages)."""
    s0 = {"index": 0, "start_step": 0, "end_step": 4, "steps": 4, "flops_per_step": 1.0, "flops": 4.0,
          "full_flops_per_step": 4.0, "full_model": False, "accuracy_before": 0.5, "accuracy": 0.6,
          "history": [{"step": 2, "accuracy": 0.55}]}
    s1 = {"index": 1, "start_step": 4, "end_step": 8, "steps": 4, "flops_per_step": 4.0, "flops": 16.0,
          "full_flops_per_step": 4.0, "full_model": True, "accuracy_before": 0.6, "accuracy": 0.9,
          "history": [{"step": 2, "accuracy": 0.55}, {"step": 6, "accuracy": 0.8}]}
    return [s0, s1]


def test_flops_curve_counts_each_stage_at_its_own_cost():
    curve = flops_curve(_records())
    assert [(p["step"], p["flops"], p["accuracy"], p["full_model"]) for p in curve] == [
        (0, 0.0, 0.5, False), (2, 2.0, 0.55, False), (4, 4.0, 0.6, False), (6, 12.0, 0.8, True),
        (8, 20.0, 0.9, True)]


def test_neuron_scoring_is_spent_at_the_start_of_its_stage():
    """Scoring (3 FLOPs at the start of stage 1) moves every later point by 3 and counts in the plan's total
    (flops_fraction) but not in training_flops_fraction."""
    from ds_prompt.fpt.report import build_report
    scoring = {"stage": 1, "samples": 3, "ranks": 1, "flops_per_example": 1.0, "flops": 3.0}
    curve = flops_curve(_records(), scoring=scoring)
    assert [(p["step"], p["flops"]) for p in curve] == [(0, 0.0), (2, 2.0), (4, 4.0), (6, 15.0), (8, 23.0)]
    records = [dict(r, layer_flops_per_step=r["flops_per_step"], layer_full_flops_per_step=4.0, wall_s=1.0,
                    train_s_per_step=None) for r in _records()]
    report = build_report(SimpleNamespace(total_steps=8, to_dict=dict), records, "activations", False, scoring)
    assert (report["flops"], report["pt_flops"]) == (23.0, 32.0)
    assert (report["flops_fraction"], report["training_flops_fraction"]) == (23 / 32, 20 / 32)
    assert report["curve"] == curve and report["scoring"] == scoring
    assert build_report(SimpleNamespace(total_steps=8, to_dict=dict), records, "activations", False)[
        "flops_fraction"] == 20 / 32


def _pt_run(folder, history, final, steps=8, **meta):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"accuracy_before": 0.5, "accuracy": final, "steps": steps,
                                                     "history": history}))
    (folder / "prompt.json").write_text(json.dumps(dict({"backbone": "m", "task": "t", "seed": 1}, **meta)))
    return folder


def test_compare_with_pt_at_equal_flops_and_flops_to_reach(tmp_path):
    report = {"flops": 20.0, "accuracy": 0.9, "full_flops_per_step": 4.0, "curve": flops_curve(_records())}
    cfg = SimpleNamespace(model="m", task="t", seed=1, resolved_output_dir=lambda: str(tmp_path / "fpt"))
    pt = _pt_run(tmp_path / "pt", [{"step": 4, "accuracy": 0.7}, {"step": 6, "accuracy": 0.75}], final=0.85)
    c = compare_with_pt(report, pt, cfg)
    # The plan spent 20 FLOPs = 5 PT steps; PT's curve: 0.7 at step 4, 0.75 at step 6 -> 0.725 at step 5.
    assert c["equal_flops_step"] == 5.0
    assert c["pt_accuracy_at_equal_flops"] == pytest.approx(0.725)
    assert (c["pt_evaluated_step_at_equal_flops"], c["pt_evaluated_accuracy_at_equal_flops"]) == (4, 0.7)
    # PT's final 0.85 is first reached by the plan's full-model evaluation at step 8 (20 FLOPs of PT's 32).
    assert (c["pt_final_accuracy"], c["pt_flops"]) == (0.85, 32.0)
    assert (c["plan_step_to_pt_final_accuracy"], c["plan_flops_to_pt_final_accuracy"]) == (8, 20.0)
    assert c["plan_flops_to_pt_final_fraction"] == pytest.approx(20 / 32)
    # A partial-model evaluation never counts as reaching the target, even when its accuracy is high enough.
    low = _pt_run(tmp_path / "low", [], final=0.58)
    assert compare_with_pt(report, low, cfg)["plan_step_to_pt_final_accuracy"] == 6
    never = _pt_run(tmp_path / "never", [], final=0.95)
    assert compare_with_pt(report, never, cfg)["plan_flops_to_pt_final_accuracy"] is None
    other = _pt_run(tmp_path / "other", [], final=0.8, seed=2)
    with pytest.raises(UserError, match="seed 2"):
        compare_with_pt(report, other, cfg)


def _fpt(tmp_path, plan, out, *extra):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "ds_prompt.cli", "fpt", "--plan", plan, "--model", "tiny:bert", "--task", "demo",
           "--max_steps", "5", "--train_limit", "32", "--eval_limit", "16", "--batch_size", "8",
           "--prompt_length", "4", "--eval_every", "1", "--scheduler", "linear", "--warmup_steps", "1",
           "--seed", "3", "--progress", "False", "--output_dir", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads((out / "fpt_report.json").read_text()), stderr=proc.stderr)


@pytest.mark.slow
def test_fpt_cli_linear_schedule_and_pt_comparison(tmp_path):
    pt = _fpt(tmp_path, "pt", tmp_path / "pt")
    assert pt["pt_comparison"]["pt_steps"] == 5 and pt["pt_comparison"]["equal_flops_step"] == pytest.approx(5)
    assert [p["step"] for p in pt["curve"]] == [0, 1, 2, 3, 4, 5]
    cr = _fpt(tmp_path, "cr", tmp_path / "cr", "--pt_reference", str(tmp_path / "pt"), "--score_samples", "4")
    c = cr["pt_comparison"]
    assert c["equal_flops_step"] == pytest.approx(cr["flops"] / cr["full_flops_per_step"]) and c["equal_flops_step"] < 5
    # 4 scoring forwards (on the full model, at the start of stage 0) are part of the plan's FLOPs
    assert cr["scoring"]["samples"] == 4 and cr["flops"] == pytest.approx(
        sum(r["flops"] for r in cr["stages"]) + 4 * cr["scoring"]["flops_per_example"])
    assert c["pt_final_accuracy"] == pt["accuracy"] and c["pt_evaluations"] == 6
    assert [p["step"] for p in cr["curve"]] == [0, 1, 2, 3, 4, 5]
    assert [p["full_model"] for p in cr["curve"]] == [False] * 4 + [True] * 2  # stages end at 1, 2, 3, 5
    # the command (`fpt ld --scheduler linear`), first without a PT reference: the report says how to
    # get the comparison; re-running with --pt_reference skips the finished stages and adds it
    ld = _fpt(tmp_path, "ld", tmp_path / "ld")
    assert "pt_comparison" not in ld and "--pt_reference" in ld["stderr"]
    stage_prompt = next((tmp_path / "ld").glob("stage*/prompt.safetensors"))
    before = stage_prompt.stat().st_mtime_ns
    ld = _fpt(tmp_path, "ld", tmp_path / "ld", "--pt_reference", str(tmp_path / "pt"))
    assert ld["pt_comparison"]["pt_final_accuracy"] == pt["accuracy"]
    assert stage_prompt.stat().st_mtime_ns == before  # no stage re-trained
