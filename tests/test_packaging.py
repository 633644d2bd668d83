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
                   "ds_prompt/ds_configs/zero3.json", "ds_prompt/ds_configs/zero0.json",
                   "ds_prompt/data/demo/train.jsonl", "ds_prompt/data/builtin_tasks.yaml"):
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


def test_one_deepspeed_config_per_zero_setup_precision_from_dtype():
    """ds_configs/ holds one config per ZeRO setup; precision and pin_memory come from --dtype and the device;
    the former *_cpu names still resolve; an explicit precision that contradicts --dtype is refused."""
    import json
    import os

    import pytest

    from ds_prompt.engine.setup import CONFIG_DIR, fill_ds_config, load_ds_config
    from ds_prompt.errors import UserError
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == ["zero0", "zero2", "zero3", "zero3_offload"]
    for name in ("zero0", "zero2", "zero3", "zero3_offload"):
        assert load_ds_config(f"{name}_cpu") == load_ds_config(name)  # the old names keep working
        filled = fill_ds_config(load_ds_config(name), 8, 1, 1.0, 1, "fp32")
        assert filled["bf16"] == {"enabled": False} and filled["fp16"] == {"enabled": False}
    offload = fill_ds_config(load_ds_config("zero3_offload"), 8, 1, 1.0, 1)
    assert offload["zero_optimization"]["offload_param"]["pin_memory"] is False  # no CUDA here
    with pytest.raises(UserError, match="bf16 is ~150x slower"):
        fill_ds_config(load_ds_config("zero0"), 8, 1, 1.0, 1, "bf16")
    explicit = dict(load_ds_config("zero0"), bf16={"enabled": True})
    with pytest.raises(UserError, match=r"sets bf16.enabled True but --dtype fp32"):
        fill_ds_config(explicit, 8, 1, 1.0, 1, "fp32")
    assert os.path.isfile(os.path.join(CONFIG_DIR, "zero3.json"))
    assert json.loads(open(os.path.join(CONFIG_DIR, "zero3.json")).read())["bf16"] == {"enabled": "auto"}
