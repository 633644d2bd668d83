"""Packaging: the wheel installs only the ds_prompt namespace (kernels/ and ds_configs/ inside it, no top-level
`kernels` or `bench`), and importing ds_prompt keeps bitsandbytes' optional hub-kernel notice out of the output."""
import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_wheel_installs_only_the_ds_prompt_namespace(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), REPO], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("ds_prompt-*.whl"))).namelist()
    assert {n.split("/")[0] for n in names} == {"ds_prompt", next(n.split("/")[0] for n in names
                                                                    if ".dist-info" in n)}
    for wanted in ("ds_prompt/kernels/activation_stats.py", "ds_prompt/kernels/topk_retrieval.py",
                   "ds_prompt/ds_configs/zero3_cpu.json", "ds_prompt/ds_configs/zero0.json",
                   "ds_prompt/data/demo/train.jsonl"):
        assert wanted in names, wanted


def test_no_hub_kernel_notice_and_deepspeed_configs_resolve(tmp_path):
    code = ("import ds_prompt, bitsandbytes; from ds_prompt.engine.setup import load_ds_config; "
            "import ds_prompt.kernels.topk_retrieval; print(load_ds_config('zero3_cpu')['zero_optimization']['stage'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("3")
    assert "kernels-community" not in proc.stderr and "get_kernel" not in proc.stderr
    top = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, text=True, cwd=tmp_path)
    assert top.returncode != 0  # ds_prompt installs no top-level `kernels` package
