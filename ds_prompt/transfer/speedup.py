"""Transferable prompt tuning (TPT) measurements: learning curves, steps to a target, FLOPs per token. The TPT
job itself (two prompt-tuning runs, random vs transferred init) is the recipe ds_prompt.recipes.tpt.

Two runs of the ordinary trainer with the same seed, data, schedule and step budget: one from the config's
init (random), one from a transferred prompt (`file:PROMPT`, e.g. the output of `projector apply`, or
`library:best`). The random run's final accuracy is the target; we report the first evaluated step at which each
run reaches it, the speedup (random steps / transfer steps) and the matching FLOPs, and plot both learning curves.

FLOPs are estimated as 4 * N * tokens: 2N per token forward and 2N backward (gradients flow to the inputs only;
the frozen weights get none), N = the backbone's 2-D weights outside embedding tables and the vocab matrix
(`matmul_params`); attention's quadratic term is ignored. Steps are known only at evaluations, so `eval_every`
sets the resolution.
"""
from __future__ import annotations

from torch import nn


def learning_curve(metrics: dict) -> list[tuple[int, float]]:
    """[(step, eval accuracy)] of a trainer run: before training, every eval_every, and at the end."""
    points = [(0, metrics["accuracy_before"])] + [(h["step"], h["accuracy"]) for h in metrics["history"]]
    return points + [(metrics["steps"], metrics["accuracy"])]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose accuracy is >= `target` (None if never)."""
    return next((step for step, acc in curve if acc >= target - 1e-12), None)


def matmul_params(model) -> int:
    """Matrix parameters a token meets: 2-D weights outside embedding tables and the output (vocab) matrix."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        skip.add(id(out.weight))
    return sum(p.numel() for p in model.parameters() if p.dim() == 2 and id(p) not in skip)
