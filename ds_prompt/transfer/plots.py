"""Figures (matplotlib, Agg backend, no display): the transfer heatmap and TPT learning curves."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def transfer_heatmap(rows: list[dict], path: str | os.PathLike, title: str = "zero-shot transfer accuracy") -> Path:
    """Heatmap of rows {source, target, accuracy}: sources down, targets across, cells annotated in %."""
    sources = list(dict.fromkeys(r["source"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    grid = [[float("nan")] * len(targets) for _ in sources]
    for r in rows:
        grid[sources.index(r["source"])][targets.index(r["target"])] = 100 * float(r["accuracy"])
    fig, ax = plt.subplots(figsize=(1.2 * len(targets) + 2.5, 0.6 * len(sources) + 1.8))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("target task")
    ax.set_ylabel("source prompt")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black",
                    fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(title)
    return _save(fig, path)


def learning_curves(curves: dict[str, list[tuple[int, float]]], path: str | os.PathLike,
                    target: float | None = None, title: str = "eval accuracy vs steps") -> Path:
    """One line per run {name: [(step, accuracy), ...]}; `target` draws the accuracy to reach."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [100 * a for _, a in points], marker="o", markersize=3, label=name)
    if target is not None:
        ax.axhline(100 * target, color="gray", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
