"""Starting and supervising FPT stage jobs: launcher commands, their environment, and process groups that never
outlive the scheduler."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ds_prompt.errors import UserError
from ds_prompt.fpt.names import DIST_LAUNCHERS, GROUP_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _is_distributed(tokens: list[str]) -> bool:
    return any(Path(t).name in DIST_LAUNCHERS for t in tokens)


def launcher_node_rank(launcher: str | None) -> int | None:
    """The `--node_rank N` a per-node launcher command names (deepspeed --no_ssh, torchrun), else None."""
    tokens = shlex.split(launcher or "")
    for i, token in enumerate(tokens):
        value = token.split("=", 1)[1] if token.startswith("--node_rank=") else (
            tokens[i + 1] if token == "--node_rank" and i + 1 < len(tokens) else None)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise UserError(f"--launcher gives --node_rank {value!r}: it must be an integer") from None
    return None


def stage_command(launcher: str | None, job_file: Path) -> list[str]:
    """Command line of a stage job. `launcher` ends where the program would start ("torchrun
    --nproc_per_node 2", "deepspeed --hostfile H --num_gpus 8", "python"); None = this Python, 1 rank.
    '{free_port}' in it becomes a free port of this machine (a fresh rendezvous port for every stage)."""
    tokens = shlex.split(launcher.replace("{free_port}", str(_free_port()))) if launcher else [sys.executable]
    return tokens + ["--module" if _is_distributed(tokens) else "-m", "ds_prompt.cli", "fpt_stage",
                     "--stage_file", str(job_file)]


def stage_env(command: list[str]) -> dict:
    """The scheduler's environment; a 1-rank job (no torchrun/deepspeed) must not join a process group
    described by inherited RANK/WORLD_SIZE/MASTER_PORT variables, so those are dropped for it."""
    env = dict(os.environ)
    if not _is_distributed(command):
        for key in GROUP_ENV:
            env.pop(key, None)
    return env


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the scheduler dies (Linux), so no stage is orphaned."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            os.killpg(proc.pid, 0)  # the launcher exited; are its workers gone too?
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_job(command: list[str]) -> tuple[int, float]:
    """Run a stage job in its own process group; (exit status, wall seconds). Interrupting the scheduler
    (Ctrl-C, SIGTERM) kills the whole group before re-raising."""
    start = time.perf_counter()
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(command, env=stage_env(command), start_new_session=True, preexec_fn=preexec)
    try:
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    return returncode, time.perf_counter() - start
