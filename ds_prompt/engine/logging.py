"""Rank-0 run logging: a progress bar, TensorBoard scalars (and the run's config as hparams) under
<output_dir>/tb, and every scalar also through DeepSpeed's monitor, so the `tensorboard`, `csv_monitor`,
`wandb` or `comet` blocks of a DeepSpeed config receive all of them (not only DeepSpeed's own)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from ds_prompt.dist import is_rank0


class RunLogger:
    """Scalars to TensorBoard, a tqdm bar, and one-line messages; all no-ops on ranks other than 0."""

    def __init__(self, tb_dir: str | None, total_steps: int, start_step: int, progress: bool = True, monitor=None):
        self.active = is_rank0()
        self.writer = self.bar = None
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        if not self.active:
            return
        if tb_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tb_dir)
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        events = [(f"{prefix}/{k}", float(v), step) for k, v in values.items()
                  if v is not None and isinstance(v, (int, float))]
        if self.writer:
            for tag, value, at in events:
                self.writer.add_scalar(tag, value, at)
        if self.monitor is not None and self.active:
            self.monitor.write_events(events)

    def hparams(self, config: dict, metrics: dict[str, float]) -> None:
        """The resolved config as TensorBoard hparams (HPARAMS tab), next to the final `metrics`."""
        if not self.writer:
            return
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.items()}
        self.writer.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None},
                                run_name=".")

    def advance(self, n: int = 1, **postfix) -> None:
        if self.bar:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()})

    def message(self, text: str) -> None:
        if self.active:
            (self.bar.write if self.bar else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.flush()
            self.writer.close()
