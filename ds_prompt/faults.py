"""Fault injection for crash tests: `DS_PROMPT_FAULT=<point>:<step>` hard-exits the process at that point.

Points: `after_checkpoint` (a checkpoint is complete), `before_rename` (a checkpoint's files are written under
their temporary name but not yet renamed into place), `mid_step` (inside a training step, after backward,
before the optimizer step), `between_stages` (the FPT scheduler, after stage <step> is in the ledger and
before the next stage starts; <step> is the stage index there). The exit is `os._exit(17)`: no cleanup, no flush,
like a killed process.
"""
from __future__ import annotations

import os

FAULT_ENV = "DS_PROMPT_FAULT"
EXIT_CODE = 17


def fault_point(where: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{where}:{step}":
        os._exit(EXIT_CODE)
