"""Which memory slots each task's discrete prompts retrieve: a heatmap PNG (+ the numbers as JSON).

Row = (task, discrete prompt); column = memory slot; cell = the mean retrieval weight the prompt puts on the
slot (0 where it is not among the top-k). With query_source=instruction+input the query also depends on the
input, so rows average over up to `limit` evaluation examples of the task.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ds_prompt.data.encoding import collate
from ds_prompt.data.loading import load_examples
from ds_prompt.errors import require
from ds_prompt.io import write_json
from ds_prompt.spt.bank import BankConfig, QuerySource, SPTModel, load_bank
from ds_prompt.spt.mixture import TaskSuite
from ds_prompt.spt.trained import load_trained


@torch.no_grad()
def retrieval_matrix(spt: SPTModel, suite: TaskSuite, task_ids: list[int]) -> tuple[list[str], torch.Tensor]:
    """(row labels, weights [rows, N]): mean retrieval weight per (task, discrete prompt) and slot."""
    cfg = spt.prompt.cfg
    labels, rows = [], []
    for t in task_ids:
        task = suite.tasks[t]
        inputs = _query_inputs(suite, t, cfg)
        for i, ids in enumerate(task.instruction_ids):
            batch = inputs["query_input_ids"].shape[0]
            instruction = torch.tensor([ids]).expand(batch, -1)
            weights, indices = spt.prompt.retrieve(instruction_ids=instruction,
                                                   instruction_mask=torch.ones_like(instruction), **inputs)
            row = torch.zeros(cfg.size).index_add_(0, indices.flatten(), weights.flatten().float()) / batch
            rows.append(row)
            kind = "" if t < cfg.num_tasks else " (held-out)"
            labels.append(f"{task.spec.name}{kind} #{i}")
    return labels, torch.stack(rows)


def _query_inputs(suite: TaskSuite, task: int, cfg: BankConfig) -> dict[str, torch.Tensor]:
    if cfg.query_source is QuerySource.INSTRUCTION:
        return {"query_input_ids": torch.zeros(1, 1, dtype=torch.long),
                "query_input_mask": torch.zeros(1, 1, dtype=torch.long)}
    encoded = suite.eval_encoded(task)
    require(encoded, f"query_source=instruction+input needs examples of task {suite.tasks[task].spec.name} to "
                     f"inspect: pass --data_dir")
    batch = collate(encoded, suite.pad_id, suite.left_pad)
    return {"query_input_ids": batch["input_ids"], "query_input_mask": batch["attention_mask"]}


def plot_retrieval(labels: list[str], matrix: torch.Tensor, path, title: str) -> Path:
    """Heatmap of `matrix` [rows, N] with one labelled row per (task, prompt); writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, slots = matrix.shape
    fig, ax = plt.subplots(figsize=(min(4 + 0.3 * slots, 24), min(1.5 + 0.35 * rows, 30)))
    image = ax.imshow(matrix.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    ax.set_yticks(range(rows), labels, fontsize=8)
    ax.set_xticks(range(slots), [str(s) for s in range(slots)], fontsize=7)
    ax.set_xlabel("memory slot")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean retrieval weight")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def inspect_bank(bank: str, tasks: list[str] | None = None, output: str | None = None, data_dir: str | None = None,
                 limit: int = 32, dtype: str = "auto") -> dict:
    """Heatmap of the slots each (task, discrete prompt) retrieves from `bank`; default tasks: the bank's seen
    and held-out tasks. Writes `output` (default <bank>/retrieval.png) and retrieval.json beside it."""
    _, meta = load_bank(bank)
    wanted = tasks or (meta["tasks"] + meta["heldout"])
    spt, backbone, meta, specs, ids = load_trained(bank, wanted, dtype=dtype)
    cfg = spt.prompt.cfg
    needs_input = cfg.query_source is QuerySource.INSTRUCTION_INPUT
    evals = [load_examples(t, "eval", data_dir, limit=limit) if (needs_input and i in ids) else []
             for i, t in enumerate(specs)]
    suite = TaskSuite.build(specs, backbone.tokenizer, backbone.family, meta["max_length"], cfg.prompt_length,
                            [[] for _ in specs], evals, left_pad=False)
    labels, matrix = retrieval_matrix(spt.eval(), suite, ids)
    folder = Path(bank) if Path(bank).is_dir() else Path(bank).parent
    png = Path(output) if output else folder / "retrieval.png"
    title = (f"{os.path.basename(os.path.normpath(bank))}: N={cfg.size}, k={cfg.top_k}, {cfg.similarity.value}, "
             f"{cfg.combine.value}, query={cfg.query_source.value}")
    plot_retrieval(labels, matrix, png, title)
    record = {"png": str(png), "rows": labels, "slots": cfg.size, "weights": matrix.tolist()}
    write_json(png.with_suffix(".json"), record)
    return record
