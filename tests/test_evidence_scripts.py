"""The SmolLM2 evidence scripts' own logic, on synthetic results: README tables and verdicts are rendered from
the CSVs (each verdict follows its stated rule), and the plots are written."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, f"{REPO}/examples/smollm2")
import common  # noqa: E402
import render_readme  # noqa: E402

TASKS = ("sst2", "mr", "agnews", "qnli", "snli", "rte", "mrpc", "cola")


def _csv(folder, name, rows):
    with open(folder / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / f"{name}.json").write_text(json.dumps({"model": "smollm2", "date": "2026-12-02", "steps": 250,
                                                     "seeds": [42, 43, 44], "heldout": ["rte", "qnli", "snli"],
                                                     "seen": ["sst2"], "eval_limit": 300}))


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(render_readme, "RESULTS", tmp_path)
    return tmp_path


def test_pending_sections_when_nothing_ran(results):
    text = render_readme.render()
    assert text.count("Pending:") == len(render_readme.SECTIONS)


def test_matrix_verdict_follows_its_rule(results):
    def acc(s, t):
        if s == "random":
            return 0.5
        return 0.8 if render_readme.KIND[s] == render_readme.KIND[t] else 0.52
    rows = [{"source": s, "target": t, "accuracy": acc(s, t), "n_eval": 500, "weak_source": s == "cola"}
            for s in TASKS + ("random",) for t in TASKS]
    _csv(results, "transfer_matrix", rows)
    section = "\n".join(render_readme.matrix_section())
    assert "**reproduced**" in section and "cola (weak)" in section
    assert "+30.0 points" in section and "+2.0" in section  # same-kind gain 0.3, other pairs 0.02
    for r in rows:
        r["accuracy"] = 0.5 if r["source"] == "random" else 0.53  # every pair +3 points: not similar-task transfer
    _csv(results, "transfer_matrix", rows)
    assert "**not reproduced**" in "\n".join(render_readme.matrix_section())


def test_pt_spt_fpt_tpt_tables(results):
    _csv(results, "pt_tasks", [{"task": "sst2", "seed": s, "steps": 250, "n_eval": 872, "accuracy_before": 0.5,
                                "accuracy": a} for s, a in ((42, 0.8), (43, 0.9), (44, 0.85))])
    pt = "\n".join(render_readme.pt_section())
    assert "0.850 ± 0.029" in pt and "1 of 1 tasks (sst2)" in pt
    _csv(results, "pt_tasks", [{"task": "cola", "seed": 42, "steps": 250, "n_eval": 1000, "accuracy_before": 0.5,
                                "accuracy": 0.7, "metric": "matthews", "headline": 0.31, "majority": 0.6}])
    pt = "\n".join(render_readme.pt_section())
    assert "| 0.600 | 0.500 | 0.700 | matthews 0.310 |" in pt and "1 of 1 tasks (cola)" in pt
    # +30 points, but only to the majority-class rate: not counted as learned, and said so
    _csv(results, "pt_tasks", [{"task": "cola", "seed": 42, "steps": 250, "n_eval": 1000, "accuracy_before": 0.31,
                                "accuracy": 0.681, "metric": "matthews", "headline": 0.023, "majority": 0.691}])
    pt = "\n".join(render_readme.pt_section())
    assert "0 of 1 tasks (none)" in pt and "On cola the gain only reaches the majority-class rate" in pt
    _csv(results, "spt", [{"mode": m, "seed": s, "steps": 300, "rte": v, "qnli": v, "snli": v, "heldout_mean": v,
                           "n_eval": "277/300/300"} for m, v in (("spt", 0.6), ("shared", 0.5)) for s in (42, 43)])
    assert "**reproduced**" in "\n".join(render_readme.spt_section())
    _csv(results, "spt", [{"mode": m, "seed": s, "steps": 300, "rte": v, "qnli": v, "snli": v, "heldout_mean": v,
                           "n_eval": "277/300/300"} for m, v in (("spt", 0.6), ("majority", 0.45)) for s in (42, 43)])
    section = "\n".join(render_readme.spt_section())
    assert "| majority class | 2 | 0.450 ± 0.000 |" in section and "majority-class rate: spt +15.0 points." in section
    _csv(results, "spt", [{"mode": m, "seed": 42, "steps": 300, "rte": v, "qnli": v, "snli": v, "heldout_mean": v,
                           "n_eval": "277/300/300"} for m, v in (("spt", 0.4503), ("shared", 0.4474))])
    assert "**undecided on one seed (SPT +0.3 points over shared" in "\n".join(render_readme.spt_section())
    _csv(results, "fpt", [{"task": "sst2", "plan": p, "accuracy": 0.8, "flops_fraction": f, "pt_accuracy_at_equal_flops":
                           0.70213, "pt_final_accuracy": 0.8, "flops_to_pt_final_fraction": r, "wall_s": 10,
                           "steps": 250, "n_eval": 500, "training_flops_fraction": f - 0.1 * (p == "cr"),
                           "scoring_samples": 1000 * (p == "cr")}
                          for p, f, r in (("pt", 1.0, 1.0), ("ld", 0.7, 0.65), ("cr", 0.6, ""))])
    fpt_text = "\n".join(render_readme.fpt_section())
    assert "reproduced for 1 of 2 task/plan pairs" in fpt_text
    assert "| sst2 | cr | 0.800 | 0.6 | 0.5 | 0.702 | 0.800 | not reached | 10 |" in fpt_text  # table precision
    assert "score the FFN neurons of fr and cr (1000 samples)" in fpt_text
    _csv(results, "fpt", [{"task": "sst2", "plan": "pt", "accuracy": 0.8, "flops_fraction": 1.0,
                           "pt_accuracy_at_equal_flops": 0.8, "pt_final_accuracy": 0.8, "flops_to_pt_final_fraction": 1,
                           "wall_s": 1683, "wall_note": "void: paused", "steps": 250, "n_eval": 500}])
    assert "| 1683 (void: paused) |" in "\n".join(render_readme.fpt_section())
    _csv(results, "tpt", [{"init": i, "seed": 42, "accuracy_at_init": 0.5, "final_accuracy": 0.8,
                           "target_accuracy": 0.8, "steps_to_target": st, "tflops_to_target": st and 1.0,
                           "max_steps": 150, "eval_every": 15, "n_eval": 500, "steps_to_vocab_target": sv}
                          for i, st, sv in (("random", 150, ""), ("vocab", 45, 150), ("sst2", 30, 60),
                                            ("agnews", "", ""))])
    tpt = "\n".join(render_readme.tpt_section())
    assert "**reproduced**" in tpt and "to the vocab init's final accuracy: **yes**" in tpt
    assert "dissimilar-task (agnews) init to random's final accuracy: **yes**" in tpt
    assert "| agnews | 0.500 | 0.800 | 0/1 | - | - | - | - |" in tpt
    # the random-init target never reached by the transferred init: not reproduced
    _csv(results, "tpt", [{"init": i, "seed": 42, "accuracy_at_init": 0.5, "final_accuracy": 0.8,
                           "target_accuracy": 0.8, "steps_to_target": st, "tflops_to_target": 1.0, "max_steps": 150,
                           "eval_every": 15, "n_eval": 500} for i, st in (("random", 150), ("sst2", ""))])
    tpt = "\n".join(render_readme.tpt_section())
    assert "**not reproduced**" in tpt and "**neither reached it**" in tpt
    assert "Caveat" not in tpt  # random init went 0.5 -> 0.8: it learned, no caveat
    _csv(results, "tpt", [{"init": "random", "seed": 42, "accuracy_at_init": 0.508, "final_accuracy": 0.52,
                           "target_accuracy": 0.52, "steps_to_target": 45, "tflops_to_target": 1.0}])
    assert "random init itself barely learned (+1.2 points in 250 steps)" in "\n".join(render_readme.tpt_section())


def test_readme_block_is_replaced_in_place(results, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render_readme.BEGIN}\nold\n{render_readme.END}\noutro\n")
    monkeypatch.setattr(render_readme, "ROOT", tmp_path)
    render_readme.main()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "Pending:" in text
    assert (results / "EVIDENCE.md").is_file()


def test_committed_readme_block_is_the_rendering_of_the_committed_results():
    """No number in the README's evidence block is typed by hand: the block is exactly what render_readme.py
    makes of docs/results/ (after changing a CSV, run `python examples/smollm2/render_readme.py`)."""
    with open(f"{REPO}/README.md") as f:
        readme = f.read()
    block = readme.split(render_readme.BEGIN + "\n", 1)[1].split(render_readme.END, 1)[0]
    assert block == render_readme.render()
    for image in re.findall(r"!\[[^]]*\]\((docs/results/[^)]+\.png)\)", block):
        assert os.path.isfile(f"{REPO}/{image}"), image


def test_seed_caption_says_which_tasks_have_how_many_seeds():
    rows = [{"task": "sst2", "seed": s} for s in ("42", "43", "44")] + [{"task": "mr", "seed": "42"}]
    assert render_readme._seeds({"seeds": [42, 43, 44]}, rows) == "42,43,44 (3 for sst2; 1 for the rest)"
    assert render_readme._seeds({"seeds": [42]}, rows[:1] + rows[3:]) == "42"
    rows += [{"task": "qnli", "seed": s} for s in ("42", "43")]
    assert render_readme._seeds({"seeds": [42, 43, 44]}, rows) == "42,43,44 (3 for sst2; 2 for qnli; 1 for the rest)"


def test_plots_are_written(tmp_path):
    import fpt
    import indicators
    import pt_tasks
    import spt
    import tpt
    import transfer_matrix
    pt_rows = [{"task": t, "seed": s, "majority": 0.5, "accuracy_before": 0.5, "accuracy": 0.7 + s / 1000}
               for t in TASKS for s in (42, 43)]
    pt_tasks.plot(pt_rows, tmp_path / "pt_tasks.png")
    spt.plot([dict({t: 0.4 for t in spt.HELDOUT}, mode=m, seed=42, heldout_mean=0.4)
              for m in spt.MODES + (spt.MAJORITY,)], tmp_path / "spt.png")
    indicators.plot([{"variant": "on_prediction_token", "metric": "on", "spearman": 0.3, "mean_per_target": 0.1,
                      "n": 56}], tmp_path / "indicators.png")
    curve = [{"step": s, "flops": s * 1e12, "accuracy": 0.5 + s / 1000, "full_model": True} for s in (0, 50, 100)]
    fpt.plot({t: {p: {"curve": curve} for p in fpt.PLANS} for t in fpt.TASKS}, tmp_path / "fpt.png")
    tpt.plot({i: [[(0, 0.5), (15, 0.6)]] * 2 for i in tpt.INITS}, tmp_path / "tpt.png")
    rows = [{"source": s, "target": t, "accuracy": 0.6, "weak_source": False} for s in TASKS + ("random",)
            for t in TASKS]
    transfer_matrix.heatmap(rows, tmp_path / "matrix.png")
    for name in ("fpt", "tpt", "matrix", "pt_tasks", "spt", "indicators"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert common.mean_se([1.0, 3.0]) == (2.0, 1.0)


def test_majority_rate_is_read_from_the_runs_eval_subset():
    from ds_prompt.data.tasks import get_task
    rows = [json.loads(line) for line in open(f"{common.DATA}/rte/validation.jsonl")]
    labels = [r["label"] for r in rows]  # rte has 277 validation examples: under the cap, so all of them
    want = max(labels.count(name) for name in set(labels)) / len(labels)
    assert len(rows) == 277 and get_task("rte").labels
    assert common.majority_rate("rte", 42, 1000, 277) == pytest.approx(want)
    import spt  # SPT's floor row: the same rule on each held-out task's subset of the seed
    row = spt.majority_row(42, {"results": {"rte": {"n": 277}, "qnli": {"n": 300}, "snli": {"n": 300}}})
    assert row["rte"] == round(want, 4) and row["mode"] == "majority" and row["n_eval"] == "277/300/300"
    assert row["heldout_mean"] == pytest.approx(sum(row[t] for t in spt.HELDOUT) / 3, abs=1e-4)


def test_scripts_use_the_checkout_they_sit_in(tmp_path, monkeypatch):
    """A worktree's evidence scripts import and run that worktree's ds_prompt, not another checkout's editable
    install: common puts the checkout first on sys.path and on the runs' PYTHONPATH."""
    probe = ("import sys; sys.path.insert(0, 'examples/smollm2'); import common, ds_prompt, pathlib; "
             "print(pathlib.Path(ds_prompt.__file__).resolve().parents[1])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", probe.replace("'examples", f"'{REPO}/examples")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(common.ROOT)
    seen = {}
    monkeypatch.setattr(common.subprocess, "run", lambda cmd, **kw: seen.update(kw))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("EVIDENCE_NO_TRAIN", raising=False)
    monkeypatch.setattr(common, "log", lambda *a: None)
    common.cli("train", "--max_steps", 1)
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [str(common.ROOT), "/elsewhere"]
    assert seen["cwd"] == common.ROOT


def test_projector_section_says_when_the_projector_collapses(results):
    """Unseen prompts are compared with the random row; projections that are one prompt (cosine >= 0.99) whatever
    their sources are reported as 'does not map prompts', projections that stay apart are not."""
    _csv(results, "projector", [{"minilm_prompt": t, "target_task": t, "projected_on_smollm2": p,
                                 "random_prompt": 0.5, "minilm_prompt_on_minilm": 0.7, "smollm2_own_prompt": 0.85,
                                 "smollm2_sst2_prompt": 0.8, "projector_trained_on": "sst2", "n_eval": 500}
                                for t, p in (("sst2", 0.84), ("mr", 0.81))])
    (results / "projector.json").write_text(json.dumps({"model": "smollm2", "date": "2026-12-03",
                                                        "trained_on": "sst2", "projector_steps": 150}))
    text = "\n".join(render_readme.projector_section())
    assert "mr (sentiment) 0.810 vs random 0.500 (+31.0 points)" in text and "Does it map" not in text
    _csv(results, "projector_similarity", [{"prompt_a": "sst2", "prompt_b": "mr", "source_cosine": 0.25,
                                            "projected_cosine": 0.9995}])
    assert "**the projector does not map prompts**" in "\n".join(render_readme.projector_section())
    _csv(results, "projector_similarity", [{"prompt_a": "sst2", "prompt_b": "mr", "source_cosine": 0.25,
                                            "projected_cosine": 0.4}])
    text = "\n".join(render_readme.projector_section())
    assert "projections stay apart (lowest cosine 0.400)" in text and "does not map" not in text
