"""Where the running recipe is, so that an interruption (Ctrl-C, SIGTERM) ends in one line that says which
step was reached and from which step the same command resumes."""
from __future__ import annotations

from pathlib import Path

_current: dict = {}
_stop: list[int] = []


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run unwinds like after Ctrl-C."""


def on_sigterm(signum, frame) -> None:
    """SIGTERM handler: raise now, and remember it, so that the step loop raises again at the next step if the
    first raise landed where Python discards exceptions (a finalizer run by the garbage collector)."""
    _stop.append(signum)
    raise Terminated()


def reset() -> None:
    """A new command in this process: forget earlier runs and stop requests."""
    _current.clear()
    _stop.clear()


def check_stop() -> None:
    """Called by the step loop between steps."""
    if _stop:
        raise Terminated()


def track(output_dir: str, run) -> None:
    """Register the run state (anything with `.step`) of the recipe writing checkpoints into `output_dir`."""
    _current.update(output_dir=output_dir, run=run)


def interruption_message() -> str:
    run, out = _current.get("run"), _current.get("output_dir")
    if run is None:  # before a step loop started, or a command without one (the FPT scheduler)
        return "interrupted; re-run the same command to continue (finished work is kept)"
    try:
        latest = (Path(out) / "checkpoints" / "latest").read_text().strip()
        resume_step = int(latest.rsplit("_", 1)[1])
    except (OSError, ValueError, IndexError):
        resume_step = 0
    return (f"interrupted at step {run.step}; re-run the same command to resume from step {resume_step}"
            + ("" if resume_step else " (no checkpoint yet: --save_every sets how often one is written)"))
