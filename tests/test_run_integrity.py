"""Run integrity: a run folder belongs to one run (identity in run.json, resumed only when it matches), one
process at a time (an OS lock), `--resume false` never mixes two runs, interruptions end in one line, one
evaluation-subset rule, and every bad input below is one `ds-prompt: error:` line, exit 2, and nothing
written (not even the output folder)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from ds_prompt.artifacts import save_prompt
from ds_prompt.cli import main
from ds_prompt.engine.run_folder import take_lock
from tests.helpers import REPO, subprocess_env

BASE = ["--model", "tiny:bert", "--task", "demo", "--train_limit", "32", "--eval_limit", "16", "--batch_size",
        "8", "--prompt_length", "4", "--progress", "False", "--eval_every", "0"]


def _train(out, capsys, *extra):
    code = main(["train", *BASE, "--output_dir", str(out), *extra])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("ds-prompt:")]


def _steps(out):
    return sorted(p.name for p in (out / "checkpoints").glob("step_*"))


def test_resume_false_in_a_used_folder_refuses_and_overwrite_starts_clean(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys, "--max_steps", "8", "--save_every", "2")[0] == 0
    before = _steps(out)
    code, lines = _train(out, capsys, "--max_steps", "4", "--save_every", "2", "--resume", "false")
    assert code == 2 and len(lines) == 1 and "--overwrite" in lines[0]
    assert _steps(out) == before  # nothing pruned, nothing mixed
    code, _ = _train(out, capsys, "--max_steps", "4", "--save_every", "2", "--resume", "false", "--overwrite", "true")
    assert code == 0 and _steps(out) == ["step_0000002", "step_0000004"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert _train(out, capsys, "--max_steps", "4", "--save_every", "2")[0] == 0  # resumes its own run


@pytest.mark.parametrize("change,field", [(("--task", "sst2", "--data_dir", "{data}"), "task"),
                                          (("--model", "tiny:roberta"), "model"), (("--seed", "9"), "seed"),
                                          (("--prompt_length", "6"), "prompt_length")])
def test_resume_refuses_another_run_naming_the_field(change, field, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys, "--max_steps", "2", "--save_every", "1")[0] == 0
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    rows = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                   [("good", "positive"), ("bad", "negative")] * 20)
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(rows)
    argv = [a.replace("{data}", str(tmp_path / "data")) for a in change]
    code, lines = _train(out, capsys, "--max_steps", "3", "--save_every", "1", *argv)
    assert code == 2 and len(lines) == 1, lines
    assert f"({field}:" in lines[0] and "--output_dir" in lines[0] and "--overwrite" in lines[0]
    assert json.loads((out / "prompt.json").read_text())["backbone"] == "tiny:bert"


def test_smaller_max_steps_than_the_finished_run_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys, "--max_steps", "4", "--save_every", "2")[0] == 0
    code, lines = _train(out, capsys, "--max_steps", "2", "--save_every", "2")
    assert code == 2 and "--max_steps 2 is below the 4 steps" in lines[0]


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = take_lock(out)  # another process's lock (flock: per open file, so it excludes us too)
    try:
        start = time.monotonic()
        code, lines = _train(out, capsys, "--max_steps", "2")
        assert code == 2 and "in use by another run" in lines[0] and f"pid {os.getpid()}" in lines[0]
        assert time.monotonic() - start < 30 and not (out / "run.json").exists()
    finally:
        holder.close()
    assert _train(out, capsys, "--max_steps", "2")[0] == 0  # the OS released it: no stale lock


def test_spt_resumed_with_another_heldout_set_refuses(tmp_path, capsys):
    base = ["spt", "train", "--model", "tiny:bert", "--tasks", "demo", "--batch_size", "8", "--bank_size", "4",
            "--memory_length", "2", "--task_prompt_length", "2", "--progress", "False", "--eval_limit", "8",
            "--train_limit", "32", "--max_steps", "2", "--save_every", "1", "--output_dir", str(tmp_path / "spt")]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--heldout", "sst2"]) == 2
    assert "(heldout:" in capsys.readouterr().err


def test_train_and_evaluate_score_the_same_subset(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys, "--max_steps", "2", "--seed", "5")[0] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_subset"]["limit"] == 16 and metrics["eval_subset"]["seed"] == 5
    assert main(["evaluate", "--prompt", str(out), "--limit", "16"]) == 0
    result = json.loads((out / "eval_demo.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["accuracy"]) and result["eval_subset"] == metrics["eval_subset"]
    assert main(["evaluate", "--prompt", str(out), "--limit", "16", "--seed", "6"]) == 0
    assert json.loads((out / "eval_demo.json").read_text())["eval_subset"]["seed"] == 6


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interruption_is_one_line_and_the_rerun_resumes(sig, code, tmp_path):
    out = tmp_path / "run"
    env = subprocess_env()
    argv = [sys.executable, "-m", "ds_prompt.cli", "train", *BASE, "--max_steps", "300", "--save_every", "2",
            "--output_dir", str(out)]
    # A runner started in the background by a non-interactive shell (`cmd &`) hands SIGINT down ignored, and
    # Python keeps it ignored: give the run the disposition an interactive terminal gives it.
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # old checkpoints are pruned: read `latest`
        try:
            if int((out / "checkpoints" / "latest").read_text().strip().rsplit("_", 1)[1]) >= 4:
                break
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code, err[-2000:]
    latest = int((out / "checkpoints" / "latest").read_text().strip().rsplit("_", 1)[1])
    assert "Traceback" not in err and lines[-1].startswith("ds-prompt: interrupted at step")
    assert f"re-run the same command to resume from step {latest}" in lines[-1] and latest >= 4
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads((out / "metrics.json").read_text())["steps"] == 300


# ---- bad input: one line, exit 2, no output folder ----------------------------------------------------------
def _prompt_with(tmp_path, name, tensors, meta=None):
    folder = tmp_path / name
    folder.mkdir()
    save_file(tensors, str(folder / "prompt.safetensors"))
    (folder / "prompt.json").write_text(json.dumps(meta or {"backbone": "tiny:bert", "family": "mlm", "task": "demo",
                                                            "head": "LabelWordHead"}))
    return str(folder)


def _file(path):
    path.write_text("not a folder")
    return str(path)


def _linear_meta():
    return {"backbone": "tiny:bert_encoder", "family": "encoder", "task": "demo", "head": "LinearHead",
            "labels": ["negative", "positive"]}


def _ds_config(tmp_path, config):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


def _peft(tmp_path, n, d):
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file({"prompt_embeddings": torch.randn(4, 32)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": n,
                                                            "token_dim": d}))
    return str(folder)


def _encoder_folder(tmp_path):
    from ds_prompt.models.tiny import build_tiny
    model, tok = build_tiny("bert_encoder")
    model.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    return str(tmp_path / "enc")


def _matrix(tmp_path):
    path = tmp_path / "matrix.csv"
    path.write_text("source,target,accuracy\np1,p2,high\n")
    for name in ("p1", "p2"):
        save_prompt(tmp_path / name, torch.randn(4, 32), {"backbone": "tiny:bert", "family": "mlm", "task": name,
                                                          "head": "LabelWordHead"})
    return str(path)


TRAIN = ["train", *BASE, "--max_steps", "2"]
CASES = {
    "lr nan": (lambda t: TRAIN + ["--lr", "nan"], r"--lr nan must be a finite number"),
    "lr inf": (lambda t: TRAIN + ["--lr", "inf"], r"--lr inf must be a finite number"),
    "grad_clip nan": (lambda t: TRAIN + ["--grad_clip", "nan"], r"--grad_clip nan"),
    "init normal:abc": (lambda t: TRAIN + ["--init", "normal:abc"], r"must be a number"),
    "init normal:nan": (lambda t: TRAIN + ["--init", "normal:nan"], r"finite number > 0"),
    "init normal:-1": (lambda t: TRAIN + ["--init", "normal:-1"], r"finite number > 0"),
    "warmup over max_steps": (lambda t: TRAIN + ["--warmup_steps", "5"], r"--warmup_steps 5 exceeds"),
    "scheduler sgdr": (lambda t: TRAIN + ["--scheduler", "sgdr"], r"unknown --scheduler 'sgdr'"),
    "deepspeed stage 7": (lambda t: TRAIN + ["--deepspeed", _ds_config(t, {"zero_optimization": {"stage": 7}})],
                          r"stage 7 must be 0, 1, 2 or 3"),
    "deepspeed list": (lambda t: TRAIN + ["--deepspeed", _ds_config(t, [1, 2])], r"must be a JSON object"),
    "deepspeed batch contradiction": (lambda t: TRAIN + ["--deepspeed", _ds_config(t, {"train_batch_size": 64})],
                                      r"train_batch_size 64 but --batch_size gives 8"),
    "family mlm on an encoder": (lambda t: ["train", *BASE, "--max_steps", "2", "--model", _encoder_folder(t),
                                            "--family", "mlm"], r"embedding-only encoder"),
    "evaluate batch_size 0": (lambda t: ["evaluate", "--prompt", _prompt_with(t, "p", {"prompt": torch.randn(4, 32)}),
                                         "--batch_size", "0"], r"--batch_size 0 must be a positive integer"),
    "export onto a file": (lambda t: ["export", "--prompt", _prompt_with(t, "p", {"prompt": torch.randn(4, 32)}),
                                      "--output_dir", _file(t / "x.txt")], r"is a file"),
    "stray head tensor": (lambda t: ["evaluate", "--prompt", _prompt_with(
        t, "p", {"prompt": torch.randn(4, 32), "head.weight": torch.randn(2, 32)})], r"unexpected tensor\(s\) head.weight"),
    "linear head wrong shape": (lambda t: ["evaluate", "--prompt", _prompt_with(
        t, "p", {"prompt": torch.randn(4, 32), "head.linear.weight": torch.randn(3, 32),
                 "head.linear.bias": torch.randn(3)}, _linear_meta())], r"expected \(2, 32\)"),
    "linear head missing": (lambda t: ["evaluate", "--prompt", _prompt_with(t, "p", {"prompt": torch.randn(4, 32)},
                                                                         _linear_meta())], r"expected head.linear.weight"),
    "int64 prompt": (lambda t: ["evaluate", "--prompt", _prompt_with(t, "p", {"prompt": torch.ones(4, 32).long()})],
                     r"dtype int64"),
    "nan prompt": (lambda t: ["evaluate", "--prompt", _prompt_with(t, "p", {"prompt": torch.full((4, 32), float("nan"))})],
                   r"128 non-finite values"),
    "empty prompt": (lambda t: ["evaluate", "--prompt", _prompt_with(t, "p", {"prompt": torch.zeros(0, 32)})],
                     r"holds no vectors"),
    "peft config contradiction": (lambda t: ["evaluate", "--model", "tiny:bert", "--task", "demo", "--prompt",
                                             _peft(t, 8, 32)], r"num_virtual_tokens 8"),
    "projector hidden 0": (lambda t: ["projector", "train", "--target_model", "tiny:bert", "--prompts",
                                      _prompt_with(t, "p", {"prompt": torch.randn(4, 32)}), "--hidden", "0"],
                           r"--hidden must be > 0"),
    "fpt plan shrinks": (lambda t: ["fpt", "--plan", _ds_config(t, {"stages": [{"steps": 2}, {"depth": 0.5, "steps": 2}]}),
                                    "--model", "tiny:bert"], r"FPT only expands"),
    "fpt plan too deep": (lambda t: ["fpt", "--plan", _ds_config(t, {"stages": [{"depth": 5, "steps": 2}, {"steps": 2}]}),
                                     "--model", "tiny:bert"], r"stage 0: depth 5 exceeds the model's 2 layers"),
    "indicators non-numeric accuracy": (lambda t: ["indicators", "--prompts", f"{t}/p1,{t}/p2", "--metric", "cos",
                                                   "--against", _matrix(t)], r"accuracy 'high' is not a number"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    build, needle = CASES[case]
    argv = build(tmp_path)
    out = tmp_path / "out"
    if argv[0] in ("train", "fpt", "indicators") or argv[:2] == ["projector", "train"]:
        argv = argv + ["--output_dir", str(out)]
    if argv[0] == "evaluate":
        argv = argv + ["--output_dir", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("ds-prompt: error")]
    assert code == 2, (case, err[-2000:])
    assert len(errors) == 1, errors or err[-2000:]
    import re
    assert re.search(needle, errors[0]), errors[0]
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


@pytest.mark.multiproc
@pytest.mark.parametrize("case", ("flag", "locked folder"))
def test_two_ranks_print_one_error_line_in_all(case, tmp_path):
    """Under torchrun every rank reaches the error (a bad flag; a folder whose lock rank 0 cannot take, which
    rank 0 broadcasts); only global rank 0 prints it, and nothing is written."""
    out = tmp_path / "run"
    env = subprocess_env(OMP_NUM_THREADS="1")
    extra, needle, holder = ["--lr", "nan"], "--lr nan must be a finite number", None
    if case == "locked folder":
        out.mkdir()
        extra, needle, holder = [], "is in use by another run", take_lock(out)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, "-m",
            "ds_prompt.cli", "train", *BASE, "--max_steps", "2", *extra, "--output_dir", str(out)]
    try:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    finally:
        if holder is not None:
            holder.close()
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("ds-prompt: error")]
    assert proc.returncode != 0 and len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [".lock"] if out.exists() else True


def test_tensorboard_has_grad_norm_at_zero0_and_the_final_evaluation(tmp_path, capsys):
    """Read with TensorBoard's own EventAccumulator: train/grad_norm is logged at ZeRO-0 (where the engine keeps
    no global norm) and equals DeepSpeed's own global norm of the same first step under ZeRO-2; eval/accuracy
    ends on metrics.json's final accuracy, also when the last step is not an eval_every step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    norms = {}
    for config in ("zero0_cpu", "zero2_cpu"):
        out = tmp_path / config
        assert _train(out, capsys, "--max_steps", "5", "--eval_every", "2", "--log_every", "1", "--lr", "0.05",
                      "--deepspeed", config)[0] == 0
        acc = EventAccumulator(str(out / "tb"))
        acc.Reload()
        norms[config] = [e.value for e in acc.Scalars("train/grad_norm")]
        evals = acc.Scalars("eval/accuracy")
        metrics = json.loads((out / "metrics.json").read_text())
        assert evals[-1].step == 5 and evals[-1].value == pytest.approx(metrics["accuracy"])
    assert len(norms["zero0_cpu"]) == 5 and norms["zero0_cpu"][0] > 0
    assert norms["zero0_cpu"][0] == pytest.approx(norms["zero2_cpu"][0], rel=1e-4)
