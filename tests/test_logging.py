"""Run logs: the resolved config lands in config.yaml (a valid --config) and in TensorBoard's hparams; every
scalar also reaches DeepSpeed's monitor, read back here from DeepSpeed's own csv_monitor files."""
import csv
import json

import pytest
import yaml

from ds_prompt.cli import main
from ds_prompt.config import TrainConfig, build_config, config_dict

BASE = ["--model", "tiny:bert", "--task", "demo", "--train_limit", "32", "--eval_limit", "16", "--batch_size", "8",
        "--max_steps", "4", "--log_every", "2", "--eval_every", "2", "--prompt_length", "4", "--progress", "False",
        "--lr", "0.01"]


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_config_yaml_hparams_and_deepspeed_csv_monitor(tmp_path):
    from ds_prompt.engine.setup import load_ds_config
    ds = load_ds_config("zero0_cpu")
    ds["csv_monitor"] = {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "job"}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    out = tmp_path / "run"
    assert main(["train", *BASE, "--output_dir", str(out), "--deepspeed", str(tmp_path / "ds.json")]) == 0

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.01 and saved["max_steps"] == 4 and saved["output_dir"] == str(out)
    assert config_dict(build_config(TrainConfig, str(out / "config.yaml"))) == saved  # a valid --config

    acc, scalars = _scalars(out / "tb")
    from tensorboard.plugins.hparams import plugin_data_pb2
    contents = acc.PluginTagToContent("hparams")
    session = next(plugin_data_pb2.HParamsPluginData.FromString(c) for c in contents.values()
                   if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    hparams = session.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.01) and hparams["model"].string_value == "tiny:bert"
    assert hparams["shortcuts"].number_value == 1  # torch stores bools as numbers

    folder = tmp_path / "csv" / "job"
    for tag in ("train/loss", "train/lr", "train/grad_norm", "eval/accuracy", "eval/f1", "eval/matthews"):
        with open(folder / (tag.replace("/", "_") + ".csv")) as f:
            rows = list(csv.reader(f))[1:]
        monitored = [(int(s), float(v)) for s, v in rows]
        assert [s for s, _ in monitored] == [s for s, _ in scalars[tag]], tag
        assert [v for _, v in monitored] == pytest.approx([v for _, v in scalars[tag]], rel=1e-6), tag
