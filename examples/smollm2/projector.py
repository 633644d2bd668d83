"""Cross-model projector all-MiniLM-L6-v2 -> SmolLM2-135M (qualitative: one source task, small budgets).

MiniLM prompts for sst2, mr and rte (similarity head, the packaged encoder); a projector (REFERENCE §1) is
trained on sst2 only, through the frozen SmolLM2 with its label words; then the MiniLM sst2, mr and rte
prompts are projected and evaluated zero-shot on SmolLM2, beside a random prompt and SmolLM2's own trained
prompt. Writes docs/results/projector.csv.

    python examples/smollm2/projector.py           # the own-prompt column needs pt_tasks.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    DATA,
    MODEL,
    RESULTS,
    RUNS,
    SAVE_EVERY,
    archive,
    cli,
    log,
    meta_json,
    read_csv,
    read_json,
    restore,
    write_csv,
)
from pt_tasks import prompt_dir  # noqa: E402

SOURCE_MODEL, TASKS, TRAIN_ON = "minilm", ("sst2", "mr", "rte"), "sst2"
SOURCE_STEPS, STEPS, EVAL = 300, 150, 500


def source_prompt(task: str) -> Path:
    out = RUNS / "projector" / "minilm_prompts" / task
    if read_json(out / "metrics.json") is None:
        cli("train", "--model", SOURCE_MODEL, "--task", task, "--data_dir", DATA, "--output_dir", out,
            "--max_steps", SOURCE_STEPS, "--lr", "1e-2", "--eval_limit", EVAL, "--save_every", SAVE_EVERY,
            "--progress", "False")
        archive(out)
    return out


def projector() -> Path:
    out = RUNS / "projector" / "projector"
    if not (out / "projector.json").is_file():
        cli("transfer", "projector", "train", "--source_model", SOURCE_MODEL, "--target_model", MODEL, "--prompts",
            source_prompt(TRAIN_ON), "--tasks", TRAIN_ON, "--data_dir", DATA, "--max_steps", STEPS,
            "--eval_limit", EVAL, "--output_dir", out, "--progress", "False")
        archive(out)
    return out


def projected_accuracy(task: str) -> dict:
    mapped = RUNS / "projector" / "projected" / task
    if not (mapped / "prompt.safetensors").is_file():
        cli("transfer", "projector", "apply", "--projector", projector(), "--prompt", source_prompt(task),
            "--output_dir", mapped)
    result = read_json(mapped / f"eval_{task}.json")
    if result is None:
        cli("evaluate", "--prompt", mapped, "--task", task, "--data_dir", DATA, "--limit", EVAL)
        result = read_json(mapped / f"eval_{task}.json")
        archive(mapped)
    return result


def main() -> None:
    restore()
    random_row = {r["target"]: r["accuracy"] for r in read_csv(RESULTS / "transfer_matrix.csv")
                  if r["source"] == "random"} if (RESULTS / "transfer_matrix.csv").is_file() else {}
    rows = []
    for task in TASKS:
        result = projected_accuracy(task)
        own = read_json(prompt_dir(task) / "metrics.json")
        rows.append({"minilm_prompt": task, "target_task": task, "projected_on_smollm2": round(result["accuracy"], 4),
                     "random_prompt": random_row.get(task, ""), "minilm_prompt_on_minilm":
                     round(read_json(source_prompt(task) / "metrics.json")["accuracy"], 4),
                     "smollm2_own_prompt": "" if own is None else round(own["accuracy"], 4),
                     "projector_trained_on": TRAIN_ON, "n_eval": result["n"]})
    write_csv(RESULTS / "projector.csv", rows)
    meta_json("projector", source_model=SOURCE_MODEL, source_steps=SOURCE_STEPS, projector_steps=STEPS,
              trained_on=TRAIN_ON, eval_limit=EVAL, label="qualitative")
    log("projector done")


if __name__ == "__main__":
    main()
