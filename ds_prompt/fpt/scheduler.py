"""The FPT stage scheduler: every stage is its own DeepSpeed job; a ledger makes the whole run resumable.

Layout under D = --output_dir:
  D/stage_<k>/              stage k's run (checkpoints/, tb/, metrics.json, prompt.*) + fpt_job.json (its job)
                            + fpt_stage.json (full-model shape, length stats, kept layers/neurons)
  D/neuron_scores.safetensors  FFN neuron scores, computed once at the first width-reduced stage and reused
                            by every later one (nested selections)
  D/fpt_ledger.json         finished stages with their metrics, wall time and FLOPs (atomic writes)
  D/fpt_report.json, D/tb/  FLOPs ledger vs plain PT; the final prompt.safetensors/prompt.json/metrics.json

Stage k > 0 starts from stage k-1's consolidated trainable state (`--init_state`): prompt, optimizer
moments, LR-schedule position, step counter, RNG and data position carry over unchanged (`max_steps` is the
cumulative step count); with `reset_optimizer` only the prompt carries over (fresh optimizer, step 0).
Re-running the same command skips finished stages; an unfinished stage resumes from its own latest checkpoint
(the trainer's `--resume`), at any world size. A stage job is started as
    <launcher tokens> (-m | --module) ds_prompt.cli fpt_stage --stage_file D/stage_<k>/fpt_job.json
in its own process group, which is killed if the scheduler is interrupted and receives SIGTERM if the
scheduler dies (Linux PR_SET_PDEATHSIG on the launcher process), so no stage outlives its scheduler.
With per-node launchers (no ssh) one scheduler runs on every node (see `run_fpt`); node 0 writes the ledger.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_prompt import dist
from ds_prompt.config import TrainConfig, build_config, config_dict
from ds_prompt.errors import UserError
from ds_prompt.faults import fault_point
from ds_prompt.fpt.flops import BACKWARD_CONVENTIONS, LengthStats, ModelShape, step_flops
from ds_prompt.fpt.partial import PartialModelSpec, apply_partial, neuron_scores
from ds_prompt.fpt.plan import StagePlan
from ds_prompt.engine.progress import on_sigterm
from ds_prompt.engine.run_folder import take_lock
from ds_prompt.fpt.report import build_report, compare_with_pt, write_tensorboard
from ds_prompt.io import atomic_path, ensure_writable_dir, write_json, write_tensors

LEDGER, REPORT, SCORES = "fpt_ledger.json", "fpt_report.json", "neuron_scores.safetensors"
JOB_FILE, STAGE_INFO = "fpt_job.json", "fpt_stage.json"
LEDGER_FORMAT = "ds_prompt.fpt_ledger/1"
ARTIFACTS = ("prompt.safetensors", "prompt.json", "metrics.json")
LENGTH_SAMPLE = 2000           # training examples whose lengths set the analytic FLOPs
_DIST_LAUNCHERS = ("deepspeed", "torchrun", "torch.distributed.run", "torch.distributed.launch")
_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT")
_FINGERPRINT_SKIP = {"output_dir", "progress"}   # flags that may change between re-runs of one FPT run


def stage_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"stage_{index}"


# ------------------------------------------------------------------------------------ stage side (one job)

@dataclass(frozen=True)
class StageJob:
    """What one stage process runs: a complete TrainConfig plus the partial model and where to put info."""
    index: int
    train: dict
    depth: int | float
    width: float
    scores_path: str
    score_samples: int

    @property
    def spec(self) -> PartialModelSpec:
        return PartialModelSpec(self.depth, self.width)

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str) -> "StageJob":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"stage file '{path}' is unreadable ({exc}): it is written by `ds-prompt fpt`; "
                            f"re-run that command") from None


class StageTransform:
    """`model_transform` of one stage: record the full model's shape and the data's lengths (FLOPs), get
    neuron scores if the stage reduces width, then make the backbone the stage's partial model in place."""

    def __init__(self, cfg: TrainConfig, job: StageJob):
        self.cfg, self.job = cfg, job

    def __call__(self, backbone) -> None:
        from ds_prompt.data.tasks import get_task
        task = get_task(self.cfg.task)
        # Scoring must not move the global RNG the trainer seeded (the run must equal a plain one).
        with torch.random.fork_rng(devices=[]):
            encoded = self._encoded_sample(backbone, task)
            shape = ModelShape.from_model(backbone.model, backbone.family, task.num_labels)
            spec = self.job.spec
            scores = None if spec.keeps_all_neurons else self._scores(backbone, task, encoded)
            info = apply_partial(backbone.model, spec, scores)
        lengths = LengthStats.of([len(e.input_ids) + self.cfg.prompt_length for e in encoded])
        dist.on_rank0(write_json, Path(self.cfg.output_dir) / STAGE_INFO, {
            "shape": shape.to_dict(), "lengths": dataclasses.asdict(lengths), "length_sample": len(encoded),
            "partial": info.to_dict(), "world_size": dist.world_size()})

    def _encoded_sample(self, backbone, task) -> list:
        from ds_prompt.data.encoding import TemplateEncoder
        from ds_prompt.data.loading import load_examples
        cfg = self.cfg
        examples = load_examples(task, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed)
        n = min(len(examples), max(LENGTH_SAMPLE, self.job.score_samples))
        sample = random.Random(cfg.seed).sample(examples, n)
        encoder = TemplateEncoder(task, backbone.tokenizer, backbone.family, cfg.max_length, cfg.prompt_length)
        return [encoder.encode(e) for e in sample]

    def _scores(self, backbone, task, encoded) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file
        path = Path(self.job.scores_path)
        if dist.broadcast_object(path.is_file()):  # rank 0 decides, so every rank takes the same branch
            return load_file(str(path))
        scores = self._compute_scores(backbone, task, encoded[:self.job.score_samples])
        dist.on_rank0(write_tensors, path, scores, {"stage": str(self.job.index),
                                                   "samples": str(min(len(encoded), self.job.score_samples))})
        dist.barrier()
        return scores

    def _current_prompt(self):
        """The prompt at the start of this stage: the previous stage's, else the run's initial prompt spec."""
        from ds_prompt.engine import state as ckpt
        if not self.cfg.init_state:
            return self.cfg.init
        tensors, _ = ckpt.load_latest(self.cfg.init_state) or (None, None)
        if tensors is None:
            raise UserError(f"stage {self.job.index} starts from {self.cfg.init_state}, which has no checkpoint: "
                            f"delete {self.cfg.output_dir} and re-run the fpt command")
        return tensors["param/prompt.weight"]

    def _compute_scores(self, backbone, task, encoded) -> dict[str, torch.Tensor]:
        """Mean |FFN activation| per neuron with the current prompt. Every rank scores every sample (a
        forward pass over ~1000 samples is small next to training, and a partitioned backbone needs all ranks
        in every forward anyway); rank 0's scores are broadcast so all ranks select the same neurons."""
        from ds_prompt.builders import build_prompted
        from ds_prompt.data.encoding import collate
        from ds_prompt.engine.setup import device
        from ds_prompt.models.family import Family
        cfg = self.cfg
        home, work = next(backbone.model.parameters()).device, device()
        # Score on the accelerator. ZeRO-3 partitions and quantized weights already live there.
        movable = home != work and not any(dist.is_zero3_param(p) for p in backbone.model.parameters())
        if movable:
            backbone.model.to(work)
        built = build_prompted(backbone, task, cfg.prompt_length, cfg.max_length, cfg.head,
                               self._current_prompt(), cfg.seed)
        built.model.prompt.to(work)
        built.model.head.to(work)
        pad, left = backbone.tokenizer.pad_token_id, backbone.family is Family.CAUSAL
        size = cfg.eval_batch_size
        batches = (collate(encoded[i:i + size], pad, left) for i in range(0, len(encoded), size))
        scores = dist.broadcast_object(neuron_scores(built.model, batches))
        if movable:
            backbone.model.to(home)
        return scores


def run_stage(stage_file: str) -> dict:
    """Run one stage (every rank of the stage job calls this). Returns the trainer's metrics."""
    from ds_prompt.engine.trainer import train
    job = StageJob.load(stage_file)
    cfg = build_config(TrainConfig, None, **job.train)
    return train(cfg, model_transform=StageTransform(cfg, job))


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
    return {k: v for k, v in config_dict(cfg).items() if k not in _FINGERPRINT_SKIP}


def _first_difference(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"--{key} ({old.get(key)!r}, now {new.get(key)!r})"
    return f"stages ({old}, now {new})"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _is_distributed(tokens: list[str]) -> bool:
    return any(Path(t).name in _DIST_LAUNCHERS for t in tokens)


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
        for key in _GROUP_ENV:
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


def _stage_config(cfg: TrainConfig, root: Path, index: int, plan: StagePlan) -> TrainConfig:
    ends = plan.end_steps()
    reset = cfg.reset_optimizer and index > 0
    max_steps = plan.stages[index].steps if reset else ends[index]
    # Stages hand over through checkpoints: without --save_every, only each stage's final one is written.
    save_every = cfg.save_every or max_steps + 1
    return dataclasses.replace(cfg, output_dir=str(stage_dir(root, index)), max_steps=max_steps,
                               save_every=save_every, resume=True, reset_optimizer=reset,
                               schedule_steps=plan.stages[index].steps if reset else plan.total_steps,
                               init_state=str(stage_dir(root, index - 1)) if index else None)


def _median_scalar(tb_dir: Path, tag: str) -> float | None:
    """Median of a TensorBoard scalar over its logged windows (None if tensorboard or the tag is missing).
    The median ignores the first window's warm-up (allocations, kernel builds) on short stages."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        values = sorted(e.value for e in acc.Scalars(tag))
    except (ImportError, KeyError):
        return None
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _stage_record(cfg: TrainConfig, plan: StagePlan, index: int, launcher: str | None, wall_s: float,
                  backward: str) -> dict:
    out = stage_dir(cfg.resolved_output_dir(), index)
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / STAGE_INFO).read_text())
    stage = plan.stages[index]
    shape, lengths = ModelShape.from_dict(info["shape"]), LengthStats(**info["lengths"])
    per_step = step_flops(shape, lengths, cfg.batch_size, stage.depth, stage.width, backward)
    full = step_flops(shape, lengths, cfg.batch_size, backward=backward)
    layers_per_step = step_flops(shape, lengths, cfg.batch_size, stage.depth, stage.width, backward, True)
    layers_full = step_flops(shape, lengths, cfg.batch_size, backward=backward, layers_only=True)
    end = plan.end_steps()[index]
    return {
        "index": index, "depth": stage.depth, "width": stage.width, "steps": stage.steps,
        "start_step": end - stage.steps, "end_step": end,
        "layers": {k: len(v) for k, v in info["partial"]["layers"].items()},
        "kept_layers": info["partial"]["layers"], "neurons_per_ffn": sorted(set(info["partial"]["neurons"].values())),
        "flops_per_step": per_step, "flops": per_step * stage.steps, "full_flops_per_step": full,
        "full_model": per_step == full,
        "layer_flops_per_step": layers_per_step, "layer_full_flops_per_step": layers_full,
        "wall_s": wall_s, "train_s_per_step": _median_scalar(out / "tb", "train/s_per_step"),
        "accuracy": metrics["accuracy"], "accuracy_before": metrics["accuracy_before"],
        "history": [{"step": h["step"], "accuracy": h["accuracy"]} for h in metrics.get("history", [])],
        "world_size": metrics["world_size"], "launcher": launcher or "python", "model_shape": info["shape"],
    }


def _publish(root: Path, last: Path) -> None:
    """The final prompt artifact is the last stage's."""
    for name in ARTIFACTS:
        with atomic_path(root / name) as tmp:
            shutil.copyfile(last / name, tmp)


def _say(text: str) -> None:
    print(f"[fpt] {text}", file=sys.stderr, flush=True)


def run_fpt(cfg: TrainConfig, plan: StagePlan, launcher: str | None = None, score_samples: int = 1000,
            retries: int = 0, backward: str = "activations", node_rank: int = 0,
            pt_reference: str | None = None) -> dict:
    """Run (or resume) every stage of `plan`; returns the report also written to D/fpt_report.json.

    `launcher` is the default stage launcher (a stage's own `launcher` in the plan wins, then this, then the
    plan's top-level one, then plain Python); `retries` re-launches a failed stage that many times (it
    resumes from its checkpoint). UserError if a stage still fails: re-running the command resumes it.

    Per-node launchers (`deepspeed --no_ssh --node_rank N`, `torchrun --node_rank N`) need one scheduler per
    node, all with the same command and a shared D. Node 0 keeps the ledger and writes the report and the
    final prompt; a scheduler with `node_rank` > 0 follows: it starts its node's part of every unfinished
    stage and reads the outcome from D. Both decide "finished" by the same test (the stage's metrics.json
    reached its last step), so after any crash the re-run schedulers skip the same stages and meet in the
    same stage job.

    `pt_reference`: a plain PT run of the same model, task, seed and data order (a `ds-prompt train` folder
    or an FPT `--plan pt` folder); the report then compares the plan with it at equal FLOPs (`pt_comparison`).
    A one-stage full-model plan is its own reference.
    """
    if backward not in BACKWARD_CONVENTIONS:
        raise UserError(f"--backward '{backward}' is unknown: use one of {', '.join(BACKWARD_CONVENTIONS)}")
    root = Path(cfg.resolved_output_dir())
    ensure_writable_dir(root)
    leader = node_rank == 0
    lock = take_lock(root) if leader else None  # one scheduler per folder (node 0); released when it exits
    try:
        return _run_plan(cfg, plan, root, leader, launcher, score_samples, retries, backward, node_rank,
                         pt_reference)
    finally:
        if lock is not None:
            lock.close()


def _run_plan(cfg: TrainConfig, plan: StagePlan, root: Path, leader: bool, launcher: str | None,
              score_samples: int, retries: int, backward: str, node_rank: int, pt_reference: str | None) -> dict:
    ledger = Ledger.open(root / LEDGER, plan, cfg) if leader else Ledger.check(root / LEDGER, plan, cfg)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C (the CLI's one handler, also when run_fpt is called from Python), so
    # run_job kills the stage's process group and the CLI ends in one line.
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        for index, stage in enumerate(plan.stages):
            stage_launcher = stage.launcher or launcher or plan.launcher
            if (leader and ledger.finished(index)) or _stage_complete(stage_dir(root, index),
                                                                     _stage_config(cfg, root, index, plan).max_steps):
                _say(f"stage {index} finished earlier: skipped")
            else:
                _run_stage_job(cfg, root, plan, index, stage_launcher, score_samples, retries, ledger)
            if leader and not ledger.finished(index):
                ledger.finish(index, _stage_record(cfg, plan, index, stage_launcher, ledger.wall_s(index), backward))
            fault_point("between_stages", index)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if not leader:
        _say(f"node {node_rank}: all {len(plan.stages)} stages done; node 0 writes the report ({root / REPORT})")
        return {"node_rank": node_rank, "stages": len(plan.stages), "total_steps": plan.total_steps}
    records = [ledger.finished(i) for i in range(len(plan.stages))]
    report = build_report(plan, records, backward, cfg.reset_optimizer)
    if pt_reference is not None or len(plan.stages) == 1 and records[0]["full_model"]:
        report["pt_comparison"] = compare_with_pt(report, pt_reference or root, cfg)
    write_json(root / REPORT, report)
    write_tensorboard(root, report)
    _publish(root, stage_dir(root, len(plan.stages) - 1))
    _say(f"done: {plan.total_steps} steps at {report['flops_fraction']:.3f} of plain PT's FLOPs; "
         f"accuracy {report['accuracy']:.4f}; report {root / REPORT}")
    return report


def _run_stage_job(cfg, root: Path, plan: StagePlan, index: int, launcher: str | None, score_samples: int,
                   retries: int, ledger: "Ledger | None") -> None:
    stage = plan.stages[index]
    stage_cfg = _stage_config(cfg, root, index, plan)
    out = stage_dir(root, index)
    out.mkdir(parents=True, exist_ok=True)
    job = StageJob(index, config_dict(stage_cfg), stage.depth, stage.width, str(root / SCORES), score_samples)
    job.save(out / JOB_FILE)  # every node writes the same job (atomically): no node waits for another
    for attempt in range(retries + 1):
        command = stage_command(launcher, out / JOB_FILE)
        end = plan.end_steps()[index]
        _say(f"stage {index}: depth {stage.depth}, width {stage.width}, steps {end - stage.steps}->{end} "
             f"(attempt {attempt + 1}): {shlex.join(command)}")
        returncode, wall = run_job(command)
        if ledger is not None:
            ledger.attempt(index, wall, returncode)
        if returncode == 0 and _stage_complete(out, stage_cfg.max_steps, wait_s=0 if ledger else 60):
            return
    raise UserError(f"stage {index} failed (exit status {returncode}); finished stages and its checkpoints are "
                    f"kept: re-run the same command to resume stage {index} from its last checkpoint")


def _stage_complete(out: Path, max_steps: int, wait_s: float = 0.0) -> bool:
    """The stage's run reached its last step (its metrics.json, written by global rank 0 before the job's
    final barrier). `wait_s`: on another node, a shared filesystem may show the file a little later."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if json.loads((out / "metrics.json").read_text())["steps"] == max_steps:
                return True
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)
