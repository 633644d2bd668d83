"""The bench/ interface contract: `python -m bench.peft_compare --family F --quick` ends with one line
`tokens_per_s_ratio=<ds_prompt/PEFT>`, after one result line per system (ds_prompt, PEFT, the plain-PyTorch
floor) from the same process run, the matmul peak and `vs_floor_ratio=<ds_prompt/floor>`."""
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, subprocess_env

pytest.importorskip("peft")


@pytest.mark.parametrize("family", ["mlm", "causal", "seq2seq", "gguf"])
def test_peft_compare_quick_prints_the_ratio_line(family, tmp_path):
    env = subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", DS_PROMPT_CACHE=str(tmp_path / "cache"))
    if family == "gguf":  # a pretrained-backbone path: --model takes what `ds-prompt train --model` takes
        from tests.gguf_helpers import write_tiny_llama_gguf
        target = ["--model", str(write_tiny_llama_gguf(tmp_path / "tiny.gguf"))]
    else:
        target = ["--family", family]
    proc = subprocess.run([sys.executable, "-m", "bench.peft_compare", *target, "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    pattern = (r"(ds_prompt|peft|floor)\s+tokens/s=([\d.]+) s/step=([\d.]+) gflops=([\d.]+) accuracy=([\d.]+) "
               r"activation_mb=([\d.]+) peak_rss_mb=(\d+)")
    systems = {m.group(1): m for ln in lines if (m := re.match(pattern, ln))}
    assert set(systems) == {"ds_prompt", "peft", "floor"}, proc.stdout
    floor = next(re.fullmatch(r"vs_floor_ratio=(\d+\.\d+)", ln) for ln in lines if ln.startswith("vs_floor"))
    assert float(floor.group(1)) == pytest.approx(float(systems["ds_prompt"].group(2)) /
                                                  float(systems["floor"].group(2)), rel=2e-3)
    assert any(re.fullmatch(r"matmul_peak_gflops=[\d.]+ \(float32, .*\)", ln) for ln in lines), proc.stdout
    # the floor trains the same prompt problem on the same batches: it learns like ds_prompt (same math)
    assert float(systems["floor"].group(5)) == pytest.approx(float(systems["ds_prompt"].group(5)), abs=0.1)
    ratio = re.fullmatch(r"tokens_per_s_ratio=(\d+\.\d+)", lines[-1])
    assert ratio, lines[-1]
    ours, theirs = float(systems["ds_prompt"].group(2)), float(systems["peft"].group(2))
    assert float(ratio.group(1)) == pytest.approx(ours / theirs, rel=2e-3)


def test_train_overhead_quick_compares_the_cli_loop_with_the_engine_path(tmp_path):
    """`bench.train_overhead --quick` runs a real `ds-prompt train` (its metrics.json and TensorBoard windows are
    what it reports) beside the engine path, and its last line is the ratio of the two printed rates."""
    out = tmp_path / "cli"
    env = subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.train_overhead", "--quick", "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    engine = next(float(m.group(1)) for ln in lines if (m := re.match(r"engine tokens/s=([\d.]+) steps=8", ln)))
    cli = next(m for ln in lines if (m := re.match(r"cli\s+tokens/s=([\d.]+) steps=(\d+) window_seconds=([\d.]+)", ln)))
    assert int(cli.group(2)) == 8
    ratio = re.fullmatch(r"cli_vs_engine_ratio=(\d+\.\d+)", lines[-1])
    assert ratio and float(ratio.group(1)) == pytest.approx(float(cli.group(1)) / engine, rel=2e-3)
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8  # the CLI path really trained, and its tokens are what the rate counts
    assert float(cli.group(1)) == pytest.approx(metrics["tokens"] / float(cli.group(3)), rel=2e-2)


def test_gpu_check_on_cpu_handles_its_arguments_only(tmp_path):
    """On CPU the GPU check measures nothing and says so; --dry_run lists its four parts; bad flags exit 2."""
    script = f"{REPO}/bench/gpu_check.sh"
    dry = subprocess.run(["bash", script, "--dry_run", "--budget_s", "300"], capture_output=True, text=True)
    assert dry.returncode == 0 and "budget 300s" in dry.stdout
    assert [ln.split(":")[0] for ln in dry.stdout.splitlines()[1:]] == ["kernels", "smollm2_bf16", "llama1b_bf16",
                                                                        "capacity_bf16"]
    assert "--dtype bf16" in dry.stdout and "--device cuda" in dry.stdout
    before = open(f"{REPO}/bench/RESULTS.md").read()
    plain = subprocess.run(["bash", script, "--out", str(tmp_path)], capture_output=True, text=True)
    assert plain.returncode == 0 and "no CUDA device here: nothing measured" in plain.stdout
    assert open(f"{REPO}/bench/RESULTS.md").read() == before  # nothing written without a GPU
    for bad in (["--bogus"], ["--budget_s", "soon"]):
        proc = subprocess.run(["bash", script, *bad], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("gpu_check.sh: error:")
