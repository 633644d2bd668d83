"""FPT stage plans: which partial model each stage trains through, and for how many steps.

A plan file (JSON or YAML) holds a list of stages, each with `steps` and optionally `depth` (int = layers
kept per stack, float in (0, 1] = fraction; default 1.0), `width` (fraction of d_ff; default 1.0) and
`launcher` (this stage's job launcher, e.g. "torchrun --nproc_per_node 4"); an optional top-level
`launcher` applies to stages without their own:

    {"stages": [{"depth": 0.25, "steps": 6000}, {"depth": 0.5, "steps": 6000},
                {"depth": 0.75, "steps": 6000}, {"steps": 12000}]}

Presets (the FPT paper's schedule, REFERENCE §2: three partial models for 20% of the steps each, then the
full model for 40%), scaled to a total number of steps: "ld" (layer dropping: 1/4, 1/2, 3/4 of the layers),
"fr" (FFN reduction: 25/50/75% of the neurons), "cr" (compound: both), and "pt" (one full-model stage).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ds_prompt.config import load_config_file
from ds_prompt.errors import UserError
from ds_prompt.fpt.partial import PartialModelSpec

_PAPER_SHARES = (0.2, 0.2, 0.2, 0.4)
PRESETS = {
    "pt": ((1.0, 1.0),),
    "ld": ((0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (1.0, 1.0)),
    "fr": ((1.0, 0.25), (1.0, 0.5), (1.0, 0.75), (1.0, 1.0)),
    "cr": ((0.25, 0.25), (0.5, 0.5), (0.75, 0.75), (1.0, 1.0)),
}
_STAGE_KEYS = {"steps", "depth", "width", "launcher"}


@dataclass(frozen=True)
class Stage:
    """One stage: `steps` optimizer steps through the partial model (depth, width)."""
    steps: int
    depth: int | float = 1.0
    width: float = 1.0
    launcher: str | None = None

    @property
    def spec(self) -> PartialModelSpec:
        return PartialModelSpec(self.depth, self.width)

    def to_dict(self) -> dict:
        out = {"steps": self.steps, "depth": self.depth, "width": self.width}
        return out if self.launcher is None else dict(out, launcher=self.launcher)


@dataclass(frozen=True)
class StagePlan:
    """Stages run in order; each continues the previous one's prompt and optimizer state."""
    stages: tuple[Stage, ...]
    launcher: str | None = None

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def end_steps(self) -> list[int]:
        """Cumulative step count at the end of each stage."""
        ends, total = [], 0
        for s in self.stages:
            total += s.steps
            ends.append(total)
        return ends

    def launcher_for(self, index: int) -> str | None:
        return self.stages[index].launcher or self.launcher

    def check_against(self, stacks: dict[str, int], d_ff: int | None = None) -> None:
        """UserError, before any stage runs, if a stage asks for more layers than a stack has, if the plan
        shrinks (a later stage keeps fewer layers or FFN neurons than an earlier one) or if it does not end on
        the full model (the final prompt must come from the model users run). `stacks`: layers per stack."""
        previous = None
        for index, stage in enumerate(self.stages):
            spec = stage.spec
            try:
                shape = (tuple(spec.layers_for(n) for n in stacks.values()), spec.width)
            except UserError as exc:
                raise UserError(f"stage {index}: {exc}") from None
            if d_ff is not None and spec.width < 1.0 and round(spec.width * d_ff) < 1:
                raise UserError(f"stage {index}: width {spec.width} keeps no FFN neuron of {d_ff}")
            if previous is not None and (any(a < b for a, b in zip(shape[0], previous[0])) or shape[1] < previous[1]):
                raise UserError(f"stage {index} (depth {stage.depth}, width {stage.width}) is smaller than stage "
                                f"{index - 1}: FPT only expands; order the stages from small to full")
            previous = shape
        full = tuple(stacks.values())
        if previous != (full, 1.0):
            raise UserError(f"the last stage keeps layers {previous[0]} of {full} and width {previous[1]}: end the "
                            f"plan with the full model (depth 1.0, width 1.0), whose prompt users run")

    def to_dict(self) -> dict:
        out = {"stages": [s.to_dict() for s in self.stages]}
        return out if self.launcher is None else dict(out, launcher=self.launcher)

    @classmethod
    def from_dict(cls, data, source: str = "plan") -> "StagePlan":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
            raise UserError(f"{source} must hold a non-empty list 'stages' of {{depth, width, steps}} entries")
        unknown = sorted(set(data) - {"stages", "launcher"})
        if unknown:
            raise UserError(f"{source} has unknown key(s) {', '.join(unknown)}: use 'stages' and 'launcher'")
        stages = tuple(_stage(entry, i, source) for i, entry in enumerate(data["stages"]))
        return cls(stages, _launcher(data.get("launcher"), source))


def _launcher(value, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise UserError(f"{where}: launcher {value!r} must be a command line such as 'torchrun --nproc_per_node 2'")
    return value


def _stage(entry, index: int, source: str) -> Stage:
    where = f"{source} stage {index}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is {entry!r}: each stage is a mapping with steps, depth, width")
    unknown = sorted(set(entry) - _STAGE_KEYS)
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}: valid keys are "
                        f"{', '.join(sorted(_STAGE_KEYS))}")
    steps = entry.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{where}: steps {steps!r} must be a positive integer")
    try:
        spec = PartialModelSpec(entry.get("depth", 1.0), entry.get("width", 1.0))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return Stage(steps, spec.depth, spec.width, _launcher(entry.get("launcher"), where))


def preset_plan(name: str, total_steps: int) -> StagePlan:
    """A paper preset scaled to `total_steps` (partial stages get round(20%) each, the full stage the rest)."""
    if name not in PRESETS:
        raise UserError(f"unknown plan preset '{name}': use one of {', '.join(PRESETS)} or a plan file")
    shapes = PRESETS[name]
    shares = _PAPER_SHARES if len(shapes) > 1 else (1.0,)
    steps = [round(total_steps * share) for share in shares[:-1]]
    steps.append(total_steps - sum(steps))
    if min(steps) < 1:
        raise UserError(f"plan '{name}' over {total_steps} steps leaves a stage with {min(steps)} steps: "
                        f"raise --max_steps to at least {len(shapes)}")
    return StagePlan(tuple(Stage(n, d, w) for n, (d, w) in zip(steps, shapes)))


def load_plan(plan: str, total_steps: int | None = None) -> StagePlan:
    """A preset name (scaled to `total_steps`) or a JSON/YAML plan file."""
    if plan in PRESETS:
        if total_steps is None:
            raise UserError(f"plan preset '{plan}' needs a total number of steps: pass --max_steps")
        return preset_plan(plan, total_steps)
    if not Path(plan).is_file():
        raise UserError(f"--plan '{plan}' is neither a preset ({', '.join(PRESETS)}) nor a file: pass a JSON/YAML "
                        f"plan such as examples/fpt_ld.json")
    return StagePlan.from_dict(load_config_file(plan), source=f"plan '{plan}'")
