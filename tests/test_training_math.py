"""Batching, accumulation, optimizers and schedules: exact properties, not just 'it runs'."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ds_prompt.config import TrainConfig, build_config
from ds_prompt.data.encoding import BatchPlan
from ds_prompt.engine.setup import build_scheduler
from ds_prompt.recipes.prompt_tuning import train
from tests.helpers import REPO
from tests.test_engine import TINY, _flags, free_port


def _prompt(path):
    return load_file(os.path.join(path, "prompt.safetensors"))["prompt"]


def test_batch_plan_is_world_size_independent_and_bucketed():
    lengths = [((i * 37) % 50) + 5 for i in range(200)]
    plan = BatchPlan(lengths, 16, seed=3)
    batches = plan.epoch(0)
    assert len(batches) == 12 and all(len(b) == 16 for b in batches)
    assert batches == BatchPlan(lengths, 16, seed=3).epoch(0) != BatchPlan(lengths, 16, seed=4).epoch(0)
    for world, accum in ((1, 1), (2, 1), (4, 2), (8, 2)):
        micro = [m for r in range(world) for m in plan.micro_batches(batches[0], world, r, accum)]
        assert sorted(i for m in micro for i in m) == sorted(batches[0])
        assert {len(m) for m in micro} == {16 // (world * accum)}
    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)
    unbucketed = BatchPlan(lengths, 16, seed=3, bucket=False).epoch(0)
    assert padded(batches) < 0.8 * padded(unbucketed), "length bucketing should cut padding"


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "cosine_with_restarts", "polynomial",
                                  "inverse_sqrt", "constant_with_warmup"])
def test_schedules_are_transformers_own(name):
    """Every --scheduler choice is transformers.get_scheduler's schedule, step for step (constant + warmup is
    its constant_with_warmup)."""
    from transformers import get_scheduler

    from ds_prompt.config import CHOICES
    assert name in CHOICES["scheduler"]
    lrs = {}
    for which in ("ours", "theirs"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        hf_name = "constant_with_warmup" if name == "constant" else name
        sched = build_scheduler(name, opt, 4, 12) if which == "ours" else \
            get_scheduler(hf_name, opt, num_warmup_steps=4, num_training_steps=12)
        lrs[which] = []
        for _ in range(12):
            lrs[which].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs["ours"] == pytest.approx(lrs["theirs"])
    if name == "linear":  # warmup from 0, then linear decay to 0 at max_steps
        assert lrs["ours"][:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
        assert lrs["ours"][4:] == pytest.approx([(12 - s) / 8 for s in range(4, 12)])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    const = build_scheduler("constant", opt, 0, 10)
    for _ in range(3):
        opt.step()
        const.step()
    assert opt.param_groups[0]["lr"] == 0.5


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    base = dict(TINY, deepspeed="zero0_cpu", max_steps=5, batch_size=8, save_every=0)
    train(build_config(TrainConfig, None, output_dir=str(tmp_path / "a"), grad_accum=1, **base))
    train(build_config(TrainConfig, None, output_dir=str(tmp_path / "b"), grad_accum=4, **base))
    torch.testing.assert_close(_prompt(tmp_path / "b"), _prompt(tmp_path / "a"), atol=1e-6, rtol=1e-5)


@pytest.mark.multiproc
def test_adafactor_trains_and_resumes_bitwise(tmp_path):
    args = dict(TINY, deepspeed="zero0_cpu", optimizer="adafactor", lr=0.05, max_steps=8, save_every=4)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)

    def run(out, fault=None):
        e = dict(env, **({"DS_PROMPT_FAULT": fault} if fault else {}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
               "-m", "ds_prompt.cli", "train"] + _flags(dict(args, output_dir=out))
        return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300).returncode
    assert run(tmp_path / "full") == 0
    assert run(tmp_path / "cut", "after_checkpoint:4") != 0
    state = load_file(str(tmp_path / "cut" / "checkpoints" / "step_0000004" / "state.safetensors"))
    assert {"opt/prompt.weight/exp_avg_sq_row", "opt/prompt.weight/exp_avg_sq_col"} <= set(state)
    assert run(tmp_path / "cut") == 0
    assert torch.equal(_prompt(tmp_path / "cut"), _prompt(tmp_path / "full"))
    assert not torch.equal(_prompt(tmp_path / "full"), state["param/prompt.weight"])
