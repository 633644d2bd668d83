"""The bench/ interface contract: `python -m bench.peft_compare --family F --quick` ends with one line
`tokens_per_s_ratio=<ds_prompt/PEFT>`, after one result line per system from the same process run."""
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
    pattern = (r"(ds_prompt|peft)\s+tokens/s=([\d.]+) s/step=([\d.]+) accuracy=([\d.]+) activation_mb=([\d.]+) "
               r"peak_rss_mb=(\d+)")
    systems = {m.group(1): m for ln in lines if (m := re.match(pattern, ln))}
    assert set(systems) == {"ds_prompt", "peft"}, proc.stdout
    ratio = re.fullmatch(r"tokens_per_s_ratio=(\d+\.\d+)", lines[-1])
    assert ratio, lines[-1]
    ours, theirs = float(systems["ds_prompt"].group(2)), float(systems["peft"].group(2))
    assert float(ratio.group(1)) == pytest.approx(ours / theirs, rel=2e-3)
