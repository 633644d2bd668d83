"""Cross-model projector all-MiniLM-L6-v2 -> SmolLM2-135M (qualitative: one source task, small budgets).

MiniLM prompts for sst2, mr and rte (similarity head, the packaged encoder); a projector (REFERENCE §1) is
trained on sst2 only, through the frozen SmolLM2 with its label words; then the MiniLM sst2, mr and rte
prompts are projected and evaluated zero-shot on SmolLM2, beside a random prompt and SmolLM2's own trained
prompt. Writes docs/results/projector.csv, and projector_similarity.csv (cosine of every pair of source prompts
and of their projections: does the projector map prompts, or emit one prompt whatever it is given?).

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


def similarity_rows() -> list[dict]:
    """Cosine similarity of every pair of MiniLM source prompts and of their projections: a projector that maps
    prompts keeps them apart; one that learned a single prompt for its training task maps all to it."""
    import itertools

    import torch
    from safetensors.torch import load_file

    def flat(folder: Path) -> torch.Tensor:
        return load_file(str(folder / "prompt.safetensors"))["prompt"].double().flatten()

    rows = []
    for a, b in itertools.combinations(TASKS, 2):
        pair = [(flat(source_prompt(t)), flat(RUNS / "projector" / "projected" / t)) for t in (a, b)]
        rows.append({"prompt_a": a, "prompt_b": b,
                     "source_cosine": round(float(torch.cosine_similarity(pair[0][0], pair[1][0], dim=0)), 4),
                     "projected_cosine": round(float(torch.cosine_similarity(pair[0][1], pair[1][1], dim=0)), 4)})
    return rows


def main() -> None:
    restore()
    matrix = read_csv(RESULTS / "transfer_matrix.csv") if (RESULTS / "transfer_matrix.csv").is_file() else []
    random_row = {r["target"]: r["accuracy"] for r in matrix if r["source"] == "random"}
    trained_row = {r["target"]: r["accuracy"] for r in matrix if r["source"] == TRAIN_ON}
    rows = []
    for task in TASKS:
        result = projected_accuracy(task)
        own = read_json(prompt_dir(task) / "metrics.json")
        rows.append({"minilm_prompt": task, "target_task": task, "projected_on_smollm2": round(result["accuracy"], 4),
                     "random_prompt": random_row.get(task, ""), "minilm_prompt_on_minilm":
                     round(read_json(source_prompt(task) / "metrics.json")["accuracy"], 4),
                     "smollm2_own_prompt": "" if own is None else round(own["accuracy"], 4),
                     f"smollm2_{TRAIN_ON}_prompt": trained_row.get(task, ""),
                     "projector_trained_on": TRAIN_ON, "n_eval": result["n"]})
    write_csv(RESULTS / "projector.csv", rows)
    write_csv(RESULTS / "projector_similarity.csv", similarity_rows())
    meta_json("projector", source_model=SOURCE_MODEL, source_steps=SOURCE_STEPS, projector_steps=STEPS,
              trained_on=TRAIN_ON, eval_limit=EVAL, label="qualitative")
    log("projector done")


if __name__ == "__main__":
    main()
