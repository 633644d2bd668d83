"""Transferability indicators vs zero-shot transfer on SmolLM2-135M (Spearman, pooled and per target).

Embedding similarities (cos, cos_token, euc, euc_token) and activated-neuron overlap ON, with ON read three
ways: at the prediction token (the last position, which has seen the whole prompt: the papers' reading of
the `<mask>` slot, now ds_prompt's default), at position 0 (the first prompt vector: ds_prompt's old default,
which on a causal LM has seen only itself), and at the prediction token binarizing the gate (gate > 0) instead
of act(gate) * up. Probe: [prompt; bos], as in REFERENCE §1. Off-diagonal (source != target) pairs of the
8 tasks; sources flagged weak in the matrix are kept (the table says how many).
Writes docs/results/indicators.csv (variant, metric, spearman, p_value, n, mean_per_target).

    python examples/smollm2/indicators.py          # needs transfer_matrix.py's output
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    MODEL,
    RESULTS,
    RUNS,
    archive,
    cli,
    grouped_bars,
    log,
    meta_json,
    read_csv,
    restore,
    write_csv,
)
from pt_tasks import TASKS, prompt_dir  # noqa: E402

VARIANTS = {  # name -> (metrics, extra indicator flags)
    "embedding": ("cos,cos_token,euc,euc_token", ()),
    "on_prediction_token": ("on", ("--position", "score")),
    "on_position_0": ("on", ("--position", "0")),
    "on_prediction_token_gate": ("on", ("--position", "score", "--neuron", "gate")),
}


def matrix_for_indicators() -> Path:
    """The merged matrix without the random row (indicators pair trained prompts)."""
    path = RUNS / "indicators" / "matrix.csv"
    rows = [{k: r[k] for k in ("source", "target", "accuracy")}
            for r in read_csv(RESULTS / "transfer_matrix.csv") if r["source"] != "random"]
    write_csv(path, rows)
    return path


def plot(rows: list[dict], path) -> None:
    """Pooled and mean per-target Spearman of each indicator against zero-shot transfer accuracy."""
    names = [f"{r['metric']}\n{r['variant'].removeprefix('on_').replace('_', ' ')}" for r in rows]
    series = {"pooled": [(float(r["spearman"]), 0.0) for r in rows],
              "mean per target": [(float(r["mean_per_target"]), 0.0) for r in rows]}
    grouped_bars(names, series, path, f"Transferability indicators on {MODEL}: Spearman vs transfer accuracy "
                 f"({rows[0]['n']} pairs)", "Spearman", ylim=(-1.0, 1.0))


def main() -> None:
    restore()
    against = matrix_for_indicators()
    prompts = ",".join(str(prompt_dir(t)) for t in TASKS)
    out_rows = []
    for variant, (metrics, extra) in VARIANTS.items():
        out = RUNS / "indicators" / variant
        if not (out / "correlation.csv").is_file():
            cli("transfer", "indicators", "--prompts", prompts, "--metric", metrics, "--against", against,
                "--output_dir", out, *extra)
            archive(out)
        for r in read_csv(out / "correlation.csv"):
            out_rows.append({"variant": variant, "metric": r["metric"], "spearman": round(float(r["spearman"]), 3),
                             "p_value": round(float(r["p_value"]), 4), "n": r["n"],
                             "mean_per_target": round(float(r["mean_per_target"]), 3)})
    write_csv(RESULTS / "indicators.csv", out_rows)
    plot(out_rows, RESULTS / "indicators.png")
    meta_json("indicators", prompts="pt_tasks seed 42", probe="[prompt; bos]", pairs="source != target",
              matrix="transfer_matrix.csv without the random row")
    log("indicators done")


if __name__ == "__main__":
    main()
