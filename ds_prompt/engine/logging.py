"""Rank-0 run logging: a progress bar and TensorBoard scalars under <output_dir>/tb."""
from __future__ import annotations

import sys

from ds_prompt.dist import is_rank0


class RunLogger:
    """Scalars to TensorBoard, a tqdm bar, and one-line messages; all no-ops on ranks other than 0."""

    def __init__(self, tb_dir: str | None, total_steps: int, start_step: int, progress: bool = True):
        self.active = is_rank0()
        self.writer = self.bar = None
        if not self.active:
            return
        if tb_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tb_dir)
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

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
