"""Crash, restart and determinism guarantees (2 gloo ranks on CPU).

Every crash test re-runs the SAME command and checks that the final prompt equals an uninterrupted run's
(bitwise at the same world size), that at most one checkpoint interval was lost, and that no process is left.
"""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO
from tests.test_engine import TINY, _flags, free_port

ARGS = dict(TINY, deepspeed="zero2_cpu", save_every=3, max_steps=12, log_every=1)


def _env(extra=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO, **(extra or {}))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun_cmd(out, nproc=2, extra_launcher=()):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra_launcher,
            "-m", "ds_prompt.cli", "train"] + _flags(dict(ARGS, output_dir=out))


def _run(cmd, env_extra=None, timeout=400):
    if "--master_port" not in " ".join(cmd):
        cmd = cmd[:3] + [f"--master_port={free_port()}"] + cmd[3:]
    return subprocess.run(cmd, cwd=REPO, env=_env(env_extra), capture_output=True, text=True, timeout=timeout)


def _prompt(out):
    return load_file(os.path.join(out, "prompt.safetensors"))["prompt"]


def _latest_step(out):
    p = os.path.join(out, "checkpoints", "latest")
    return int(open(p).read().strip().split("_")[1]) if os.path.exists(p) else 0


def _no_orphans(marker):
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    for p in left:
        p.kill()
    assert not left, f"orphaned processes: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "run")
    proc = _run(_torchrun_cmd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.multiproc
def test_kill9_one_rank_mid_run_then_rerun_matches(reference, tmp_path):
    out = str(tmp_path / "run")
    cmd = _torchrun_cmd(out)
    cmd = cmd[:3] + [f"--master_port={free_port()}"] + cmd[3:]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    deadline = time.time() + 300
    while _latest_step(out) < 6 and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.05)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
               if p.environ().get("LOCAL_RANK") == "1"]
    assert workers, "rank 1 not found"
    workers[0].send_signal(signal.SIGKILL)
    try:
        launcher.wait(timeout=120)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL) if launcher.poll() is None else None
    assert launcher.returncode != 0
    killed_at = _latest_step(out)
    assert 6 <= killed_at < ARGS["max_steps"] and not os.path.exists(os.path.join(out, "prompt.safetensors"))
    proc = _run(_torchrun_cmd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting from" in proc.stderr and f"at step {killed_at}" in proc.stderr
    assert torch.equal(_prompt(out), _prompt(reference))
    _no_orphans(out)


@pytest.mark.multiproc
def test_crash_between_checkpoint_write_and_rename_keeps_previous(reference, tmp_path):
    out = str(tmp_path / "run")
    crashed = _run(_torchrun_cmd(out), env_extra={"DS_PROMPT_FAULT": "before_rename:6"})
    assert crashed.returncode != 0
    ckpts = os.path.join(out, "checkpoints")
    assert _latest_step(out) == 3 and not os.path.exists(os.path.join(ckpts, "step_0000006"))
    assert any(n.startswith(".step_0000006.tmp") for n in os.listdir(ckpts)), "the half-written one is there"
    proc = _run(_torchrun_cmd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 3" in proc.stderr
    assert torch.equal(_prompt(out), _prompt(reference))
    assert not [n for n in os.listdir(ckpts) if ".tmp" in n], "stale temporary checkpoint not cleaned"
    _no_orphans(out)


@pytest.mark.multiproc
def test_elastic_two_ranks_to_one_and_back(reference, tmp_path):
    out = str(tmp_path / "run")
    assert _run(_torchrun_cmd(out), env_extra={"DS_PROMPT_FAULT": "after_checkpoint:3"}).returncode != 0
    assert _run(_torchrun_cmd(out, nproc=1), env_extra={"DS_PROMPT_FAULT": "after_checkpoint:9"}).returncode != 0
    assert _latest_step(out) == 9
    proc = _run(_torchrun_cmd(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(_prompt(out), _prompt(reference), atol=1e-6, rtol=1e-5)
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 12


@pytest.mark.multiproc
def test_same_seed_same_world_size_is_bitwise_deterministic(reference, tmp_path):
    out = str(tmp_path / "again")
    assert _run(_torchrun_cmd(out)).returncode == 0
    assert torch.equal(_prompt(out), _prompt(reference))


@pytest.mark.multiproc
def test_two_nodes_on_loopback_train_crash_and_resume(reference, tmp_path):
    """Two launcher invocations, one rank each, joined over 127.0.0.1 (`deepspeed --no_ssh --node_rank`):
    the CI stand-in for launchers/multi_node.sh. Node 1 dies after a checkpoint; both restart and finish."""
    out = str(tmp_path / "run")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")

    def launch_both(fault_on_node1=None):
        port = free_port()
        procs = []
        for node in (0, 1):
            cmd = ["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                   "--master_addr", "127.0.0.1", "--master_port", str(port), "--module", "ds_prompt.cli",
                   "train"] + _flags(dict(ARGS, output_dir=out))
            extra = {"DS_PROMPT_FAULT": fault_on_node1} if (node == 1 and fault_on_node1) else {}
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(extra), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        codes = []
        for p in procs:
            try:
                p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            codes.append(p.returncode)
        return codes

    codes = launch_both(fault_on_node1="after_checkpoint:6")
    assert codes[1] != 0 and _latest_step(out) == 6
    _no_orphans(out)
    assert launch_both() == [0, 0]
    meta = json.load(open(os.path.join(out, "metrics.json")))
    assert meta["world_size"] == 2 and meta["steps"] == 12
    assert torch.equal(_prompt(out), _prompt(reference)), "2 nodes x 1 rank == 1 node x 2 ranks, bitwise"
    _no_orphans(out)
