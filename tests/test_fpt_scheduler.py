"""The FPT stage scheduler: stage jobs (1 rank; 2 ranks under torchrun or the deepspeed launcher) on a ZeRO-3
partitioned backbone, hand-off of the exact optimizer state, the ledger, and resuming after a killed stage and
after a killed scheduler."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ds_prompt.config import TrainConfig, build_config
from ds_prompt.errors import UserError
from ds_prompt.fpt.launch import stage_command
from ds_prompt.fpt.stage import StageJob, StageTransform
from ds_prompt.models.tiny import build_tiny
from tests.helpers import REPO

TINY = dict(task="demo", train_limit=64, eval_limit=32, batch_size=8, prompt_length=4, lr=0.05,
            eval_every=0, log_every=2, save_every=2, progress="false", deepspeed="zero3_cpu", seed=7)
TORCHRUN = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {{free_port}}"
DEEPSPEED = "deepspeed --num_gpus 2 --master_port {free_port}"


def _plan(launcher: str) -> dict:
    """Stage 0: 1 of 2 layers, half the FFN neurons, scored and trained on 2 ranks; stage 1: the full model on
    1 rank (a different world size)."""
    return {"stages": [{"depth": 1, "width": 0.5, "steps": 6, "launcher": launcher}, {"steps": 6}]}


def _env(**extra):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_PROMPT_FAULT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _fpt_command(plan_file: Path, out: Path) -> list[str]:
    flags = [x for k, v in dict(TINY, output_dir=out).items() for x in (f"--{k}", str(v))]
    flags += ["--model", str(out.parent / "model")]
    return [sys.executable, "-m", "ds_prompt.cli", "fpt", "--plan", str(plan_file)] + flags


def _fpt(plan_file, out, check=True, **env):
    proc = subprocess.run(_fpt_command(plan_file, out), cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _wait_until_gone(text: str, timeout_s: float = 60.0) -> list[int]:
    deadline = time.time() + timeout_s
    while (left := _processes_mentioning(text)) and time.time() < deadline:
        time.sleep(0.5)
    return left


def _latest_state(run_dir: Path):
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "state.safetensors")), json.loads((ckpt / "state.json").read_text())


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(json.dumps(_plan(TORCHRUN)))
    return path


def _save_model(folder: Path) -> None:
    """tiny:bert as a model FOLDER: from_pretrained under ZeRO-3 partitions it while loading (zero.Init),
    so the stages score, slice and train a partitioned backbone."""
    model, tok = build_tiny("bert")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def uninterrupted(plan_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("fpt")
    _save_model(root / "model")
    _fpt(plan_file, root / "full")
    return root / "full"


@pytest.mark.multiproc
def test_fpt_run_writes_report_ledger_and_final_prompt(uninterrupted):
    out = uninterrupted
    report = json.loads((out / "fpt_report.json").read_text())
    s0, s1 = report["stages"]
    assert (s0["layers"], s0["neurons_per_ffn"], s0["world_size"]) == ({"bert.encoder.layer": 1}, [32], 2)
    assert (s1["layers"], s1["neurons_per_ffn"], s1["world_size"]) == ({"bert.encoder.layer": 2}, [64], 1)
    assert (s0["start_step"], s0["end_step"], s1["end_step"]) == (0, 6, 12)
    assert s1["flops_per_step"] == s1["full_flops_per_step"] > 2 * s0["flops_per_step"]
    # neuron scoring (stage 0, on both ranks, every one of the 64 training samples) is part of the plan's compute
    from safetensors import safe_open

    from ds_prompt.fpt.flops import LengthStats, ModelShape, forward_flops
    with safe_open(str(out / "neuron_scores.safetensors"), framework="pt") as f:
        meta = f.metadata()
    scoring = report["scoring"]
    assert (scoring["stage"], scoring["samples"], scoring["ranks"], meta["samples"]) == (0, 64, 2, "64")
    assert scoring["flops"] == pytest.approx(64 * 2 * forward_flops(ModelShape.from_dict(s0["model_shape"]),
                                                                    LengthStats(**json.loads(meta["lengths"]))))
    pt = 12 * s1["full_flops_per_step"]
    assert report["training_flops_fraction"] == pytest.approx((s0["flops"] + s1["flops"]) / pt)
    assert report["flops_fraction"] == pytest.approx((s0["flops"] + s1["flops"] + scoring["flops"]) / pt)
    assert report["flops"] == pytest.approx(s0["flops"] + s1["flops"] + scoring["flops"])
    assert 0.5 < report["training_flops_fraction"] < 0.75 and report["total_steps"] == 12
    assert all(s["wall_s"] > 0 and s["train_s_per_step"] > 0 for s in report["stages"])
    assert report["wall_fraction_estimate"] is not None
    assert (out / "neuron_scores.safetensors").is_file()
    ledger = json.loads((out / "fpt_ledger.json").read_text())
    assert set(ledger["stages"]) == {"0", "1"}
    final = load_file(str(out / "prompt.safetensors"))["prompt"]
    assert torch.equal(final, load_file(str(out / "stage_1" / "prompt.safetensors"))["prompt"])
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("fpt/flops_cumulative")] == [6, 12]


def _handoff_config(stage_dir: Path, tmp: Path, **changes) -> tuple[TrainConfig, StageJob]:
    job = StageJob.load(str(stage_dir / "fpt_job.json"))
    train = dict(job.train, output_dir=str(tmp), progress=False, **changes)
    cfg = build_config(TrainConfig, None, **train)
    return cfg, dataclasses.replace(job, train=train)


@pytest.mark.multiproc
def test_optimizer_state_carries_over_an_expansion_unchanged(uninterrupted, tmp_path):
    from ds_prompt.recipes.prompt_tuning import train
    before, meta_before = _latest_state(uninterrupted / "stage_0")
    assert meta_before["step"] == 6 and "opt/prompt.weight/exp_avg" in before
    # Stage 1 started on the FULL model from stage 0's state; stopping it after 0 steps saves exactly what it
    # started with.
    cfg, job = _handoff_config(uninterrupted / "stage_1", tmp_path / "zero", max_steps=6, deepspeed="zero0_cpu")
    train(cfg, model_transform=StageTransform(cfg, job))
    after, meta_after = _latest_state(tmp_path / "zero")
    for key in ("param/prompt.weight", "opt/prompt.weight/exp_avg", "opt/prompt.weight/exp_avg_sq", "rng/torch"):
        assert torch.equal(after[key], before[key]), key
    assert meta_after["optimizer_step"] == meta_before["optimizer_step"] == 6
    assert meta_after["scheduler"]["last_epoch"] == meta_before["scheduler"]["last_epoch"]
    # The ablation switch keeps only the prompt: a fresh optimizer at step 0.
    cfg, job = _handoff_config(uninterrupted / "stage_1", tmp_path / "reset", max_steps=1, reset_optimizer=True,
                               deepspeed="zero0_cpu")
    train(cfg, model_transform=StageTransform(cfg, job))
    _, meta_reset = _latest_state(tmp_path / "reset")
    assert meta_reset["step"] == 1 and meta_reset["optimizer_step"] == 1


@pytest.mark.multiproc
def test_killed_stage_and_killed_scheduler_resume_to_the_uninterrupted_prompt(uninterrupted, tmp_path):
    out = tmp_path / "cut"
    _save_model(tmp_path / "model")
    plan_file = tmp_path / "plan.json"  # the same stages; stage 0 through the deepspeed launcher this time
    plan_file.write_text(json.dumps(_plan(DEEPSPEED)))
    # 1. Every rank of stage 1 hard-exits right after its step-8 checkpoint (stage 1 runs steps 7..12).
    crashed = _fpt(plan_file, out, check=False, DS_PROMPT_FAULT="after_checkpoint:8")
    assert crashed.returncode != 0 and "re-run the same command" in crashed.stderr
    assert (out / "stage_1" / "checkpoints" / "latest").read_text().strip() == "step_0000008"
    assert set(json.loads((out / "fpt_ledger.json").read_text())["stages"]) == {"0"}
    assert not _wait_until_gone(str(out), 30), "no stage process outlives a failed stage"
    # 2. The scheduler itself is SIGKILLed while it re-runs stage 1: the stage job must not be orphaned.
    (out / "stage_1" / "fpt_stage.json").unlink()
    sched = subprocess.Popen(_fpt_command(plan_file, out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "stage_1" / "fpt_stage.json").exists() and sched.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert sched.poll() is None, f"scheduler ended before the kill:\n{sched.stderr.read()[-3000:]}"
    os.kill(sched.pid, signal.SIGKILL)
    sched.wait()
    assert not _wait_until_gone(str(out), 60), "the stage job died with its scheduler"
    # 3. The same command again: stage 0 is skipped, stage 1 resumes from its last checkpoint.
    resumed = _fpt(plan_file, out)
    assert "stage 0 finished earlier" in resumed.stderr
    assert "starting from" in resumed.stderr and "stage_1/checkpoints at step" in resumed.stderr
    ledger = json.loads((out / "fpt_ledger.json").read_text())
    assert [a["returncode"] for a in ledger["attempts"]["1"]][0] != 0 and len(ledger["attempts"]["0"]) == 1
    want = load_file(str(uninterrupted / "prompt.safetensors"))["prompt"]
    got = load_file(str(out / "prompt.safetensors"))["prompt"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not _processes_mentioning(str(out))


@pytest.mark.multiproc
def test_scheduler_killed_between_stages_resumes_at_the_next_stage(uninterrupted, plan_file, tmp_path):
    """The scheduler hard-exits right after stage 0 is in the ledger, before stage 1 starts; the same command
    again skips stage 0 and ends bitwise equal to the uninterrupted run (same plan, same world sizes)."""
    out = tmp_path / "cut"
    _save_model(tmp_path / "model")
    crashed = _fpt(plan_file, out, check=False, DS_PROMPT_FAULT="between_stages:0")
    assert crashed.returncode == 17, crashed.stderr[-3000:]
    assert set(json.loads((out / "fpt_ledger.json").read_text())["stages"]) == {"0"}
    assert not (out / "stage_1").exists() and not (out / "prompt.safetensors").exists()
    assert not _wait_until_gone(str(out), 30)
    resumed = _fpt(plan_file, out)
    assert "stage 0 finished earlier" in resumed.stderr
    ledger = json.loads((out / "fpt_ledger.json").read_text())
    assert len(ledger["attempts"]["0"]) == 1 and len(ledger["attempts"]["1"]) == 1
    want = load_file(str(uninterrupted / "prompt.safetensors"))["prompt"]
    assert torch.equal(load_file(str(out / "prompt.safetensors"))["prompt"], want)


def test_rerun_with_another_plan_is_refused(plan_file, tmp_path):
    from ds_prompt.fpt.ledger import Ledger
    from ds_prompt.fpt.plan import load_plan
    cfg = build_config(TrainConfig, None, output_dir=str(tmp_path))
    Ledger.open(tmp_path / "fpt_ledger.json", load_plan(str(plan_file)), cfg)
    with pytest.raises(UserError, match="different stages"):
        Ledger.open(tmp_path / "fpt_ledger.json", load_plan("ld", 12), cfg)
    with pytest.raises(UserError, match="--lr"):
        Ledger.open(tmp_path / "fpt_ledger.json", load_plan(str(plan_file)), dataclasses.replace(cfg, lr=1.0))


def test_stage_commands_per_launcher(tmp_path):
    job = tmp_path / "fpt_job.json"
    tail = ["ds_prompt.cli", "fpt_stage", "--stage_file", str(job)]
    assert stage_command(None, job) == [sys.executable, "-m"] + tail
    assert stage_command("deepspeed --hostfile H --num_gpus 8", job) == \
        ["deepspeed", "--hostfile", "H", "--num_gpus", "8", "--module"] + tail
    cmd = stage_command("torchrun --nproc_per_node 2 --master_port {free_port}", job)
    assert cmd[:3] == ["torchrun", "--nproc_per_node", "2"] and cmd[4].isdigit() and cmd[5] == "--module"


def test_fpt_cli_rejects_conflicting_flags(plan_file, tmp_path):
    from ds_prompt.fpt.cli import fpt
    with pytest.raises(UserError, match="--max_steps 5 differs"):
        fpt(str(plan_file), output_dir=str(tmp_path), max_steps=5)
    with pytest.raises(UserError, match="score_samples"):
        fpt("ld", output_dir=str(tmp_path), score_samples=0)
    with pytest.raises(UserError, match="same fixed --master_port"):
        fpt("ld", output_dir=str(tmp_path), launcher="deepspeed --no_ssh --node_rank 1 --master_port {free_port}")
    with pytest.raises(UserError, match="--node_rank 0 differs from the launcher's --node_rank 1"):
        fpt("ld", output_dir=str(tmp_path), launcher="torchrun --node_rank=1 --master_port 29500", node_rank=0)
    assert not any(tmp_path.iterdir()), "refused before writing anything"


def test_node_rank_is_read_from_per_node_launchers():
    from ds_prompt.fpt.launch import launcher_node_rank
    assert launcher_node_rank("deepspeed --hostfile H --no_ssh --node_rank 3 --master_port 1") == 3
    assert launcher_node_rank("torchrun --nnodes 2 --node_rank=1 --master_port 1") == 1
    assert launcher_node_rank("torchrun --nproc_per_node 2 --master_port {free_port}") is None
    assert launcher_node_rank(None) is None
    with pytest.raises(UserError, match="must be an integer"):
        launcher_node_rank("torchrun --node_rank $NODE")


def test_linear_schedule_spans_the_whole_plan_not_each_stage(tmp_path):
    """Carried-over stages share one LR schedule: a linear decay reaches 0 at the plan's end only."""
    from ds_prompt.config import TrainConfig
    from ds_prompt.fpt.plan import preset_plan
    from ds_prompt.fpt.scheduler import _stage_config
    plan = preset_plan("ld", 20)
    cfg = TrainConfig(scheduler="linear", max_steps=20)
    stages = [_stage_config(cfg, tmp_path, i, plan) for i in range(len(plan.stages))]
    assert [s.schedule_steps for s in stages] == [20] * len(plan.stages)
    assert stages[-1].max_steps == 20 and stages[0].max_steps == plan.stages[0].steps
    reset = [_stage_config(TrainConfig(scheduler="linear", reset_optimizer=True), tmp_path, i, plan)
             for i in range(len(plan.stages))]
    assert [s.schedule_steps for s in reset[1:]] == [st.steps for st in plan.stages[1:]]


@pytest.mark.multiproc
def test_fpt_across_two_loopback_nodes_resumes_after_one_node_dies(tmp_path):
    """One scheduler per "node" (`--launcher "deepspeed --no_ssh --node_rank N ..."` on 127.0.0.1, one rank
    each), sharing the output folder: every stage is one 2-rank job across both nodes. Node 1's rank dies right
    after stage 1's step-8 checkpoint; both schedulers fail; the same two commands again skip stage 0, resume
    stage 1 from step 8 on both nodes and end equal to a 1-node 2-rank run of the same plan."""
    from tests.test_engine import free_port
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"stages": [{"depth": 1, "width": 0.5, "steps": 6}, {"steps": 6}]}))
    _save_model(tmp_path / "model")
    one_node = _fpt_command(plan_file, tmp_path / "one_node") + ["--launcher", TORCHRUN]
    proc = subprocess.run(one_node, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")
    out = tmp_path / "two_nodes"

    def both_nodes(fault_on_node1=None):
        port = free_port()
        procs = []
        for node in (0, 1):
            launcher = (f"deepspeed --hostfile {hostfile} --no_ssh --node_rank {node} --master_addr 127.0.0.1 "
                        f"--master_port {port}")
            env = _env(DS_PROMPT_FAULT=fault_on_node1) if (node == 1 and fault_on_node1) else _env()
            procs.append(subprocess.Popen(_fpt_command(plan_file, out) + ["--launcher", launcher], cwd=REPO,
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        results = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=400)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                _, err = p.communicate()
            results.append((p.returncode, err))
        return results

    (code0, err0), (code1, err1) = both_nodes(fault_on_node1="after_checkpoint:8")
    assert code0 != 0 and code1 != 0, (err0[-2000:], err1[-2000:])
    assert "re-run the same command" in err0 and "re-run the same command" in err1
    assert (out / "stage_1" / "checkpoints" / "latest").read_text().strip() == "step_0000008"
    assert set(json.loads((out / "fpt_ledger.json").read_text())["stages"]) == {"0"}
    assert not _wait_until_gone(str(out), 60), "no stage process outlives its failed schedulers"

    (code0, err0), (code1, err1) = both_nodes()
    assert (code0, code1) == (0, 0), (err0[-3000:], err1[-3000:])
    for err in (err0, err1):
        assert "stage 0 finished earlier" in err
    assert "stage_1/checkpoints at step 8" in err0, err0[-3000:]
    assert "node 1: all 2 stages done" in err1
    report = json.loads((out / "fpt_report.json").read_text())
    assert [s["world_size"] for s in report["stages"]] == [2, 2]
    want = load_file(str(tmp_path / "one_node" / "prompt.safetensors"))["prompt"]
    got = load_file(str(out / "prompt.safetensors"))["prompt"]
    assert torch.equal(got, want), "2 nodes x 1 rank (interrupted) == 1 node x 2 ranks, bitwise"
    assert not _processes_mentioning(str(out))
