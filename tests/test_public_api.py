"""The lazy public API of `ds_prompt/__init__.py`: importing the package loads no recipe and no DeepSpeed; each
name resolves to the object it documents, and the documented usage works end to end."""
import subprocess
import sys

import pytest
import torch

import ds_prompt
from ds_prompt import artifacts, config
from ds_prompt.fpt import partial
from ds_prompt.recipes import inference, prompt_tuning


def test_import_is_light():
    code = ("import sys, ds_prompt; heavy = [m for m in sys.modules if m == 'deepspeed' or "
            "m.startswith(('ds_prompt.recipes', 'ds_prompt.engine', 'ds_prompt.fpt'))]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_names_resolve_to_their_objects():
    assert ds_prompt.TrainConfig is config.TrainConfig
    assert ds_prompt.train is prompt_tuning.train
    assert ds_prompt.evaluate is inference.evaluate_prompt
    assert ds_prompt.load_prompt is artifacts.load_prompt
    assert ds_prompt.evenly_select_layers is partial.evenly_select_layers
    assert set(ds_prompt.__all__) <= set(dir(ds_prompt))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ds_prompt.trian  # noqa: B018


def test_documented_usage(tmp_path):
    from ds_prompt import TrainConfig, evaluate, load_prompt, train
    out = str(tmp_path / "run")
    metrics = train(TrainConfig(model="tiny:bert", max_steps=4, output_dir=out, progress=False, eval_limit=None))
    again = evaluate(prompt=out)
    assert again["n"] == metrics["eval_n"] and again["eval_subset"] == metrics["eval_subset"]  # the same examples
    assert again["accuracy"] == pytest.approx(metrics["accuracy"]) and again["loss"] == pytest.approx(
        metrics["eval_loss"], rel=1e-5)
    tensor, meta, _ = load_prompt(out)
    assert tensor.shape == (20, 32) and tensor.dtype == torch.float32 and meta["task"] == "demo"
