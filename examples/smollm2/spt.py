"""SPT on SmolLM2-135M: multitask prompted training on sentiment (sst2, mr), topic (agnews), paraphrase
(mrpc) and acceptability (cola); the whole NLI category (rte, qnli, snli) is held out and scored zero-shot,
its discrete prompts retrieving from the bank. Modes: spt (memory bank + retrieval), shared (one soft prompt
of the same length for every task) and untrained (the initialization), 3 seeds. Discrete prompts are fed in
the input too (T0-style, --instruction_in_input) as well as used as the retrieval query.
Writes docs/results/spt.csv (mode, seed, held-out task accuracy and mean; mode "majority" is the majority-class
rate of the same eval subsets, the floor a zero-shot prompt must beat).

    python examples/smollm2/spt.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    DATA,
    MAJORITY,
    MODEL,
    RESULTS,
    RUNS,
    SAVE_EVERY,
    SEEDS,
    archive,
    cli,
    grouped_bars,
    log,
    majority_rate,
    mean_se,
    meta_json,
    mode_label,
    read_json,
    restore,
    write_csv,
)

SEEN, HELDOUT = ("sst2", "mr", "agnews", "mrpc", "cola"), ("rte", "qnli", "snli")
MODES, STEPS, EVAL = ("spt", "shared", "untrained"), 300, 300


def run(mode: str, seed: int) -> dict:
    out = RUNS / "spt" / f"{mode}-s{seed}"
    metrics = read_json(out / "metrics.json")
    if metrics is None or metrics["steps"] != (0 if mode == "untrained" else STEPS):
        cli("spt", "train", "--model", MODEL, "--tasks", ",".join(SEEN), "--heldout", ",".join(HELDOUT),
            "--data_dir", DATA, "--mode", mode, "--seed", seed, "--max_steps", STEPS, "--eval_limit", EVAL,
            "--eval_seen", "False", "--instruction_in_input", "True", "--save_every", SAVE_EVERY,
            "--output_dir", out, "--progress", "False")
        metrics = read_json(out / "metrics.json")
        archive(out)
    return metrics


def plot(rows: list[dict], path) -> None:
    """Held-out accuracy per task and the mean, per mode (mean ± standard error over seeds)."""
    groups = list(HELDOUT) + ["heldout_mean"]
    series = {mode_label(mode): [mean_se([float(r[g]) for r in rows if r["mode"] == mode]) for g in groups]
              for mode in MODES + (MAJORITY,) if any(r["mode"] == mode for r in rows)}
    seeds = ",".join(sorted({str(r["seed"]) for r in rows}))
    grouped_bars([g.replace("heldout_mean", "held-out mean") for g in groups], series, path,
                 f"SPT on {MODEL}: zero-shot on held-out {', '.join(HELDOUT)} ({STEPS} steps, seeds {seeds})",
                 "accuracy")


def n_eval(metrics: dict) -> str:
    """Examples each held-out task was scored on, e.g. 277/300/300."""
    return "/".join(str(metrics["results"][t]["n"]) for t in HELDOUT)


def majority_row(seed: int, metrics: dict) -> dict:
    """Always predicting each held-out task's most common label, on the eval subset the seed's runs scored."""
    rates = {t: majority_rate(t, seed, EVAL, metrics["results"][t]["n"]) for t in HELDOUT}
    return {"mode": MAJORITY, "seed": seed, "steps": 0, **{t: round(r, 4) for t, r in rates.items()},
            "heldout_mean": round(sum(rates.values()) / len(rates), 4),
            "n_eval": n_eval(metrics)}


def main() -> None:
    restore()
    rows = []
    for seed in SEEDS:
        for mode in MODES:
            m = run(mode, seed)
            row = {"mode": mode, "seed": seed, "steps": m["steps"]}
            row.update({t: round(m["results"][t]["accuracy"], 4) for t in HELDOUT})
            row["heldout_mean"] = round(m["heldout_mean"], 4)
            row["n_eval"] = n_eval(m)
            rows.append(row)
        rows.append(majority_row(seed, m))
    write_csv(RESULTS / "spt.csv", rows)
    plot(rows, RESULTS / "spt.png")
    meta_json("spt", seen=SEEN, heldout=HELDOUT, steps=STEPS, eval_limit=EVAL, seeds=sorted({r["seed"] for r in rows}),
              instruction_in_input=True, bank="defaults of ds-prompt spt train (16 x 10, top-2, per-task prompt 10)")
    log("spt done")


if __name__ == "__main__":
    main()
