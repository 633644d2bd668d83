"""Render the README's SmolLM2 evidence section from docs/results/*.csv and *.json (no number typed by hand).

Writes docs/results/EVIDENCE.md and replaces the README block between `<!-- evidence:begin -->` and
`<!-- evidence:end -->` with it. Experiments whose CSV is not there yet are listed as pending. Each verdict
line follows a rule stated next to it, computed from the same CSV.

    python examples/smollm2/render_readme.py
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import MAJORITY, PLANNED_SEEDS, RESULTS, ROOT, mean_se, mode_label, read_csv  # noqa: E402

BEGIN, END = "<!-- evidence:begin -->", "<!-- evidence:end -->"
MAJORITY_MARGIN = 0.02  # a prompt must beat always-the-most-common-label by this much
KIND = {"sst2": "sentiment", "mr": "sentiment", "agnews": "topic", "qnli": "nli", "snli": "nli", "rte": "nli",
        "mrpc": "paraphrase", "cola": "acceptability"}


def _meta(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class _Pending(Exception):
    """An experiment whose CSV is not there yet (its script is named after it)."""


def _results(name: str) -> tuple[list[dict], dict]:
    """(rows of docs/results/<name>.csv, its recipe <name>.json); _Pending when the script has not run yet."""
    path = RESULTS / f"{name}.csv"
    if not path.is_file():
        raise _Pending(name)
    return read_csv(path), _meta(name)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _pm(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f}" if len(values) == 1 else f"{m:.3f} ± {se:.3f}"


def _caption(name: str, **facts) -> str:
    m = _meta(name)
    parts = [f"model {m.get('model', '?')}"] + [f"{k} {v}" for k, v in facts.items()] + [f"date {m.get('date', '?')}"]
    return "_" + "; ".join(parts) + "._"


def _figure(name: str, alt: str) -> list[str]:
    """The plot line of a section, when its script wrote the PNG."""
    return ["", f"![{alt}](docs/results/{name}.png)"] if (RESULTS / f"{name}.png").is_file() else []


def _seeds(meta: dict, rows: list[dict]) -> str:
    """'42,43,44 (3 for sst2, agnews; 1 for the rest)': the seeds that ran and which tasks have how many."""
    per_task = defaultdict(set)
    for r in rows:
        per_task[r["task"]].add(str(r["seed"]))
    counts = defaultdict(list)
    for task, seeds in per_task.items():
        counts[len(seeds)].append(task)
    ran = ",".join(str(s) for s in meta.get("seeds", sorted({int(r["seed"]) for r in rows})))
    if len(counts) <= 1:
        return ran
    *named, rest = sorted(counts, reverse=True)
    return f"{ran} ({'; '.join(f'{n} for ' + ', '.join(counts[n]) for n in named)}; {rest} for the rest)"


def _pt_steps() -> str:
    return str(_meta("pt_tasks").get("steps", "?"))


def pt_section() -> list[str]:
    rows, meta = _results("pt_tasks")
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    table, learned, majority_only = [], [], []
    for task, rs in by_task.items():
        headline = [float(r["headline"]) for r in rs if r.get("metric", "accuracy") != "accuracy" and r.get("headline")]
        shown = f"{rs[0]['metric']} {_pm(headline)}" if headline else ""
        floor = [float(r["majority"]) for r in rs if r.get("majority")]
        table.append([task, KIND.get(task, ""), len(rs), rs[0]["n_eval"], f"{max(floor):.3f}" if floor else "",
                      _pm([float(r["accuracy_before"]) for r in rs]), _pm([float(r["accuracy"]) for r in rs]), shown])
        gain = mean_se([float(r["accuracy"]) - float(r["accuracy_before"]) for r in rs])[0]
        above_floor = mean_se([float(r["accuracy"]) for r in rs])[0] - (max(floor) if floor else 0.0)
        if gain >= 0.05 and above_floor >= MAJORITY_MARGIN:
            learned.append(task)
        elif gain >= 0.05:
            majority_only.append(task)
    note = (f" On {', '.join(majority_only)} the gain only reaches the majority-class rate (within "
            f"{MAJORITY_MARGIN * 100:.0f} points): the prompt learned to predict one class, not the task."
            if majority_only else "")
    return [_caption("pt_tasks", steps=meta.get("steps"), lr=meta.get("lr"), init=meta.get("init"),
                     seeds=_seeds(meta, rows), batch=meta.get("batch_size"), prompt=meta.get("prompt_length"),
                     **{"n eval": f"<= {meta.get('eval_limit')} per task (validation)"}),
            "", *_table(["task", "kind", "seeds", "n eval", "majority class", "untrained prompt", "trained prompt",
                         "GLUE metric (trained)"], table), "",
            f"Accuracy ± standard error over seeds; majority class = always predicting the eval subset's most "
            f"common label. Prompts learned the task (>= 5 points over the untrained prompt and >= "
            f"{MAJORITY_MARGIN * 100:.0f} over the majority class) on {len(learned)} of {len(by_task)} tasks "
            f"({', '.join(learned) or 'none'}).{note}"
            + (f" Not run yet: {', '.join(t for t in KIND if t not in by_task)}." if set(KIND) - set(by_task) else ""),
            *_figure("pt_tasks", "prompt tuning per task")]


def matrix_section() -> list[str]:
    rows, meta = _results("transfer_matrix")
    acc = {(r["source"], r["target"]): float(r["accuracy"]) for r in rows}
    sources = list(dict.fromkeys(r["source"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    weak = {r["source"] for r in rows if r["weak_source"] == "True"}
    table = [[s + (" (weak)" if s in weak else "")] + [f"{acc[(s, t)]:.3f}" for t in targets] for s in sources]
    gain = {(s, t): acc[(s, t)] - acc[("random", t)] for s in sources if s != "random" for t in targets if s != t}
    same = [g for (s, t), g in gain.items() if KIND[s] == KIND[t]]
    cross = [g for (s, t), g in gain.items() if KIND[s] != KIND[t]]
    s_mean, c_mean = sum(same) / len(same), sum(cross) / len(cross)
    verdict = "reproduced" if s_mean >= 0.05 and s_mean > c_mean else "not reproduced"
    return [_caption("transfer_matrix", prompts=f"{meta.get('prompts', '?')} of the table above "
                                                f"({_pt_steps()} steps)", seeds=1, eval="zero-shot",
                     **{"n eval": f"<= {meta.get('limit')} per target"}), "",
            *_table(["source \\ target"] + targets, table), "",
            "(weak): the source's own-task prompt beats the random prompt on its own task by < 5 points.", "",
            f"Similar tasks transfer (Su et al.): same-kind pairs gain {s_mean * 100:+.1f} points over the random "
            f"prompt on average ({len(same)} pairs), other pairs {c_mean * 100:+.1f} ({len(cross)} pairs). Rule: "
            f"reproduced when same-kind pairs gain >= 5 points and more than other pairs: **{verdict}**.",
            *_figure("transfer_matrix", "transfer matrix")]


def indicators_section() -> list[str]:
    rows, meta = _results("indicators")
    table = [[r["variant"], r["metric"], r["spearman"], r["p_value"], r["mean_per_target"], r["n"]] for r in rows]
    best_embedding = max(float(r["spearman"]) for r in rows if r["variant"] == "embedding")
    on = {r["variant"]: float(r["spearman"]) for r in rows if r["metric"] == "on"}
    on_score = on.get("on_prediction_token", float("nan"))
    verdict = "reproduced" if on_score > max(best_embedding, 0.0) else "not reproduced"
    matrix = _meta("transfer_matrix")
    pairs = sorted({r["n"] for r in rows})
    return [_caption("indicators", prompts=f"{meta.get('prompts', '?')} ({_pt_steps()} steps)", seeds=1,
                     probe=meta.get("probe"), pairs=f"{'/'.join(pairs)} ordered ({meta.get('pairs')})",
                     **{"n eval": f"<= {matrix.get('limit')} per target (the transfer matrix)"}), "",
            *_table(["variant", "indicator", "Spearman (pooled)", "p", "mean per target", "pairs"], table), "",
            f"ON predicts transfer better than embedding similarity (Su et al.): ON at the prediction token "
            f"{on_score:+.3f} vs the best embedding indicator {best_embedding:+.3f} (pooled Spearman). Rule: "
            f"reproduced when ON at the prediction token is positive and above every embedding indicator: "
            f"**{verdict}**.", *_figure("indicators", "indicator correlations")]


def _mean_steps(rs: list[dict], column: str) -> float:
    """Mean steps to a target over seeds; inf when some seed never reached it."""
    reached = [int(r[column]) for r in rs if r.get(column, "") != ""]
    return sum(reached) / len(reached) if rs and len(reached) == len(rs) else float("inf")


def tpt_section() -> list[str]:
    rows, meta = _results("tpt")
    by_init = defaultdict(list)
    for r in rows:
        by_init[r["init"]].append(r)
    table = []
    for init, rs in by_init.items():
        reached = [r for r in rs if r["steps_to_target"] != ""]
        flops = [float(r["tflops_to_target"]) for r in reached]
        table.append([init, _pm([float(r["accuracy_at_init"]) for r in rs]),
                      _pm([float(r["final_accuracy"]) for r in rs]),
                      f"{len(reached)}/{len(rs)}", " / ".join(r["steps_to_target"] or "-" for r in rs),
                      " / ".join(r["tflops_to_target"] or "-" for r in rs),
                      (f"{sum(flops) / len(flops):.1f}" + ("" if len(flops) == len(rs) else
                                                           f" (the {len(flops)} seeds that reached it)"))
                      if flops else "-",
                      " / ".join(r.get("steps_to_vocab_target", "") or "-" for r in rs)])
    steps = {init: _mean_steps(rs, "steps_to_target") for init, rs in by_init.items()}
    steps_vocab = {init: _mean_steps(rs, "steps_to_vocab_target") for init, rs in by_init.items()}
    target = _pm([float(r["target_accuracy"]) for r in by_init.get("random", [])]) if by_init.get("random") else "?"
    inf = float("inf")

    def yes(a: float, b: float) -> str:
        return "yes" if a < b else "no"

    sst2, agnews = steps.get("sst2", inf), steps.get("agnews", inf)
    similar = "neither reached it" if sst2 == agnews == inf else yes(sst2, agnews)
    sst2_faster = sst2 < steps.get("random", 0)
    checks = (f"sst2 init faster than random init to random's final accuracy ({target}): "
              f"**{'yes' if sst2_faster else 'no'}**; "
              f"faster than the vocab init to the vocab init's final accuracy: "
              f"**{yes(steps_vocab.get('sst2', inf), steps_vocab.get('vocab', 0))}**; "
              f"similar-task (sst2) init faster than dissimilar-task (agnews) init to random's final accuracy: "
              f"**{similar}**")
    verdict = "reproduced" if sst2_faster else "not reproduced"
    random_rows = by_init.get("random", [])
    random_gain = (sum(float(r["final_accuracy"]) - float(r["accuracy_at_init"]) for r in random_rows)
                   / len(random_rows) if random_rows else None)
    weak = (f" Caveat: random init itself barely learned ({random_gain * 100:+.1f} points in {meta.get('steps')} "
            "steps), so its target is easy to reach; the vocab-init target is the stronger test."
            if random_gain is not None and random_gain < 0.05 else "")
    n_seeds = len(meta.get("seeds", []))
    return [_caption("tpt", target=meta.get("target"), steps=meta.get("steps"), seeds=n_seeds,
                     **{"eval every": meta.get("eval_every"), "n eval": meta.get("eval_limit")}), "",
            *_table(["init", "accuracy at init", "final accuracy", "reached random's final",
                     "steps to random's final (per seed)", "TFLOPs to random's final (per seed)", "mean TFLOPs",
                     "steps to vocab init's final (per seed)"], table), "",
            "Target: the random-init run's final accuracy of the same seed (second target: the vocab-init run's, "
            "the init of this project's PT runs); `-` = not reached in the budget, 0 = already at init. "
            "Transferred prompts are good initializations (Su et al.): rule, reproduced when the sst2 init reaches "
            f"random init's final accuracy in fewer steps than random init on average: **{verdict}**. {checks}.{weak}"
            + (f" ({n_seeds} of {len(PLANNED_SEEDS)} seeds so far.)" if n_seeds < len(PLANNED_SEEDS) else ""),
            *_figure("tpt", "TPT curves")]


COLLAPSED = 0.99  # projections closer than this (cosine) are one prompt, whatever their sources


def projector_section() -> list[str]:
    rows, meta = _results("projector")
    trained = meta.get("trained_on")
    table = [[r["minilm_prompt"], _fixed(r["minilm_prompt_on_minilm"]), _fixed(r["projected_on_smollm2"]),
              _fixed(r["random_prompt"]), _fixed(r.get(f"smollm2_{trained}_prompt", "")),
              _fixed(r["smollm2_own_prompt"]), r["n_eval"]] for r in rows]
    unseen = []
    for r in rows:
        if r["minilm_prompt"] == trained or r["random_prompt"] in ("", None):
            continue
        projected, random_ = float(r["projected_on_smollm2"]), float(r["random_prompt"])
        unseen.append(f"{r['minilm_prompt']} ({KIND.get(r['minilm_prompt'], '?')}) {projected:.3f} vs random "
                      f"{random_:.3f} ({100 * (projected - random_):+.1f} points)")
    pt, matrix = _meta("pt_tasks"), _meta("transfer_matrix")
    out = [_caption("projector", source=f"all-MiniLM-L6-v2 ({meta.get('source_steps')} steps)",
                    **{"projector steps": meta.get("projector_steps"), "trained on": trained,
                       "seeds": "1 (42)", "n eval": f"<= {meta.get('eval_limit')} per task"}), "",
           *_table(["MiniLM prompt (task)", "on MiniLM", "projected, on SmolLM2", "random prompt on SmolLM2",
                    f"SmolLM2's {trained} prompt", "SmolLM2's own prompt", "n eval"], table), "",
           f"Prompts the projector never saw (it was trained on {trained} only), projected and evaluated zero-shot "
           f"on SmolLM2: {'; '.join(unseen) or 'none yet'}. Random prompt and SmolLM2's {trained} prompt: the "
           f"transfer matrix (n <= {matrix.get('limit')}); SmolLM2's own prompt: the PT table's seed-42 prompt on "
           f"its eval set (n <= {pt.get('eval_limit')})."]
    path = RESULTS / "projector_similarity.csv"
    if path.is_file():
        pairs = read_csv(path)
        projected = min(float(r["projected_cosine"]) for r in pairs)
        source = max(float(r["source_cosine"]) for r in pairs)
        listing = ", ".join(f"{r['prompt_a']}/{r['prompt_b']} {float(r['source_cosine']):.3f} -> "
                            f"{float(r['projected_cosine']):.3f}" for r in pairs)
        if projected >= COLLAPSED:
            verdict = (f"**the projector does not map prompts**: every projection is the same prompt (cosine >= "
                       f"{projected:.3f}) although the sources are far apart (cosine <= {source:.3f}), so a "
                       f"projected prompt's accuracy is that of one learned {trained}-like prompt, whatever the "
                       f"input")
        else:
            verdict = f"projections stay apart (lowest cosine {projected:.3f})"
        out += ["", f"Does it map prompts? Cosine of source prompts -> of their projections: {listing}: {verdict}."]
    return out + ["", "Qualitative: one projector, trained on one task, with small budgets."]


def _fixed(value: str, digits: int = 3) -> str:
    """A CSV number at the tables' precision (empty stays empty)."""
    return f"{float(value):.{digits}f}" if value not in ("", None) else ""


def _scoring_note(rows: list[dict]) -> str:
    samples = sorted({int(r["scoring_samples"]) for r in rows if int(r.get("scoring_samples") or 0)})
    return f"{'/'.join(map(str, samples))} samples" if samples else "not recorded for these runs"


def fpt_section() -> list[str]:
    rows, meta = _results("fpt")
    table = [[r["task"], r["plan"], _fixed(r["accuracy"]), r["flops_fraction"],
              r.get("training_flops_fraction") or r["flops_fraction"], _fixed(r["pt_accuracy_at_equal_flops"]),
              _fixed(r["pt_final_accuracy"]), r["flops_to_pt_final_fraction"] or "not reached",
              f'{r["wall_s"]} ({r["wall_note"]})' if r.get("wall_note") else r["wall_s"]] for r in rows]
    saving = [r for r in rows if r["plan"] != "pt" and r["flops_to_pt_final_fraction"]
              and float(r["flops_to_pt_final_fraction"]) <= 0.7]
    partial = [r for r in rows if r["plan"] != "pt"]
    verdict = ("reproduced" if len(saving) == len(partial) else
               f"reproduced for {len(saving)} of {len(partial)} task/plan pairs" if saving else "not reproduced")
    return [_caption("fpt", steps=meta.get("steps"), seed=meta.get("seed"), init=meta.get("init"),
                     **{"eval every": meta.get("eval_every"), "n eval": meta.get("eval_limit")}), "",
            *_table(["task", "plan", "final accuracy", "FLOPs / PT", "training FLOPs / PT",
                     "PT accuracy at equal FLOPs", "PT final accuracy", "FLOPs to reach PT final / PT FLOPs",
                     "wall s"], table), "",
            "FLOPs / PT counts everything the plan computed, including the forwards that score the FFN neurons "
            f"of fr and cr ({_scoring_note(rows)}); training FLOPs / PT leaves them out, as the paper does "
            f"(~1000 scoring samples are negligible next to its 30k steps, not next to {meta.get('steps')}). PT "
            "accuracy at equal FLOPs: PT's accuracy at the step where it has spent the plan's FLOPs, linearly "
            "interpolated between PT's evaluations of the same seed. Wall s: the whole plan as measured (model "
            "loads, evaluations and, for fr and cr, the neuron scoring included).", "",
            "FPT saves > 30% of the compute at PT's accuracy (Huang et al.): rule, reproduced for a plan when it "
            f"first reaches PT's final accuracy (full-model evaluations only) with <= 70% of PT's FLOPs: "
            f"**{verdict}**.", *_figure("fpt", "FPT accuracy over FLOPs")]


def spt_section() -> list[str]:
    rows, meta = _results("spt")
    heldout = list(meta.get("heldout", ("rte", "qnli", "snli")))
    by_mode = defaultdict(list)
    for r in rows:
        by_mode[r["mode"]].append(r)
    table = [[mode_label(mode), len(rs)]
             + [_pm([float(r[t]) for r in rs]) for t in heldout + ["heldout_mean"]] for mode, rs in by_mode.items()]
    means = {mode: mean_se([float(r["heldout_mean"]) for r in rs]) for mode, rs in by_mode.items()}
    floor = ""
    if MAJORITY in means:  # how far above the majority-class floor the trained modes got
        gains = {m: (means[m][0] - means[MAJORITY][0]) * 100 for m in means if m != MAJORITY}
        floor = (" Held-out mean over the majority-class rate: "
                 + ", ".join(f"{m} {g:+.1f}" for m, g in gains.items()) + " points.")
    spt, shared = means.get("spt", (0, 0)), means.get("shared", (0, 0))
    verdict = "reproduced" if spt[0] - shared[0] > spt[1] + shared[1] else "not reproduced"
    if min((len(rs) for rs in by_mode.values()), default=0) < 2:  # no standard error yet: the rule cannot decide
        verdict = (f"undecided on one seed (SPT {(spt[0] - shared[0]) * 100:+.1f} points over shared; "
                   f"the rule needs the standard errors of {len(PLANNED_SEEDS)} seeds)")
    return [_caption("spt", seen=",".join(meta.get("seen", [])), **{"held out": ",".join(heldout)},
                     steps=meta.get("steps"), seeds=len(meta.get("seeds", [])),
                     **{"n eval": f"<= {meta.get('eval_limit')} per task"}), "",
            *_table(["mode", "seeds"] + heldout + ["held-out mean"], table), "",
            "Zero-shot accuracy on the held-out NLI category, mean over each task's discrete prompts. Retrieved "
            "memory prompts generalize better than one shared prompt (Bari et al.): rule, reproduced when SPT's "
            f"held-out mean exceeds the shared prompt's by more than the sum of their standard errors: **{verdict}**."
            f"{floor}", *_figure("spt", "SPT held-out accuracy")]


SECTIONS = (("Prompt tuning per task", pt_section), ("Zero-shot transfer matrix", matrix_section),
            ("Transferability indicators", indicators_section), ("Transferred initialization (TPT)", tpt_section),
            ("Cross-model projector (qualitative)", projector_section), ("FPT", fpt_section),
            ("SPT, held-out task category", spt_section))


def render() -> str:
    pt = _meta("pt_tasks")
    lines = ["Every table below is rendered by `python examples/smollm2/render_readme.py` from the CSVs that "
             "`bash examples/smollm2/run_all.sh` writes under docs/results/ "
             f"({pt.get('machine', '?').split(', load')[0]}, fp32; label words, read at the last position; batch "
             f"{pt.get('batch_size', '?')}, {pt.get('prompt_length', '?')}-token prompt, max length "
             f"{pt.get('max_length', '?')}).", ""]
    for title, section in SECTIONS:
        try:
            body = section()
        except _Pending as pending:
            body = [f"Pending: `python examples/smollm2/{pending}.py`."]
        lines += [f"### {title}", "", *body, ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    text = render()
    (RESULTS / "EVIDENCE.md").write_text("# Evidence on SmolLM2-135M\n\n" + text.replace("docs/results/", ""))
    readme = ROOT / "README.md"
    old = readme.read_text()
    if BEGIN not in old:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{text}{END}", old, flags=re.S)
    readme.write_text(new)
    print(f"rendered {len(SECTIONS)} sections into README.md and docs/results/EVIDENCE.md")


if __name__ == "__main__":
    main()
