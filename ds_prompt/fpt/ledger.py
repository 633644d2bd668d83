"""The FPT ledger: finished stages with their metrics, wall time and FLOPs, and the run's identity (atomic writes)."""
from __future__ import annotations

import json
from pathlib import Path

from ds_prompt.config import TrainConfig, config_dict
from ds_prompt.errors import UserError
from ds_prompt.fpt.names import FINGERPRINT_SKIP, LEDGER_FORMAT
from ds_prompt.fpt.plan import StagePlan
from ds_prompt.io import write_json

# ------------------------------------------------------------------------------ scheduler side (one process)

class Ledger:
    """D/fpt_ledger.json: the plan and flags it belongs to, finished stages, and every attempt's wall time."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    @classmethod
    def open(cls, path: Path, plan: StagePlan, cfg: TrainConfig) -> "Ledger":
        identity = {"plan": _plan_identity(plan), "train": _fingerprint(cfg)}
        if not path.exists():
            ledger = cls(path, dict(identity, format=LEDGER_FORMAT, stages={}, attempts={}))
            ledger.save()
            return ledger
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"FPT ledger {path} is unreadable ({exc}): delete {path.parent} to start over") from None
        cls._check_identity(path, data, identity)
        return cls(path, data)

    @classmethod
    def check(cls, path: Path, plan: StagePlan, cfg: TrainConfig) -> None:
        """For a follower node: the ledger node 0 keeps, if already there, must be this run's (read only)."""
        if path.exists():
            identity = {"plan": _plan_identity(plan), "train": _fingerprint(cfg)}
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return  # being replaced by node 0 right now; node 0 validates it
            cls._check_identity(path, data, identity)

    @staticmethod
    def _check_identity(path: Path, data: dict, identity: dict) -> None:
        for key, value in identity.items():
            if data.get(key) != value:
                what = _first_difference(data.get(key), value)
                raise UserError(f"{path.parent} holds an FPT run with different {what}: pass the same --plan and "
                                f"flags to resume it, or a new --output_dir")

    def save(self) -> None:
        write_json(self.path, self.data)

    def finished(self, index: int) -> dict | None:
        return self.data["stages"].get(str(index))

    def attempt(self, index: int, wall_s: float, returncode: int) -> None:
        self.data["attempts"].setdefault(str(index), []).append({"wall_s": wall_s, "returncode": returncode})
        self.save()

    def wall_s(self, index: int) -> float:
        return sum(a["wall_s"] for a in self.data["attempts"].get(str(index), []))

    def finish(self, index: int, record: dict) -> None:
        self.data["stages"][str(index)] = record
        self.save()


def _plan_identity(plan: StagePlan) -> list:
    # Launchers may change between re-runs (another world size after losing a node); the stages may not.
    return [{"steps": s.steps, "depth": s.depth, "width": s.width} for s in plan.stages]


def _fingerprint(cfg: TrainConfig) -> dict:
    return {k: v for k, v in config_dict(cfg).items() if k not in FINGERPRINT_SKIP}


def _first_difference(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"--{key} ({old.get(key)!r}, now {new.get(key)!r})"
    return f"stages ({old}, now {new})"
