"""`ds-prompt` end to end (in-process), and every bad input: one error line, exit != 0, no artifact."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ds_prompt.artifacts import save_prompt
from ds_prompt.cli import main

BASE = ["--model", "tiny:bert", "--task", "demo", "--train_limit", "32", "--eval_limit", "16", "--batch_size",
        "8", "--max_steps", "2", "--prompt_length", "4", "--progress", "False", "--save_every", "0"]


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("ds-prompt: error")]


def test_train_evaluate_export_roundtrip(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train"] + BASE + ["--output_dir", str(out), "--eval_limit", "None", "--max_steps", "4"]
    assert main(argv) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--prompt", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval_demo.json").read_text())
    assert result["accuracy"] == pytest.approx(trained["accuracy"]) and result["n"] == trained["eval_n"] == 160
    assert f"{result['accuracy']:.4f}" in printed
    assert main(["export", "--prompt", str(out), "--format", "peft", "--output_dir", str(tmp_path / "peft")]) == 0
    exported = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(exported, load_file(str(out / "prompt.safetensors"))["prompt"])
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    # the adapter carries the task, labels, template and backbone: it evaluates with no --task or --model
    assert main(["evaluate", "--prompt", str(tmp_path / "peft")]) == 0
    again = json.loads((tmp_path / "peft" / "eval_demo.json").read_text())
    assert again["accuracy"] == result["accuracy"] and again["n"] == result["n"]


def _empty_data(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "train.jsonl").write_text("")
    (d / "validation.jsonl").write_text('{"text": "ok", "label": "positive"}\n')
    return str(d)


def _narrow_prompt(tmp_path):
    save_prompt(tmp_path / "narrow", torch.randn(4, 16), {"backbone": "tiny:bert", "task": "demo"})
    return f"file:{tmp_path / 'narrow'}"


def _bad_config(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"lrr": 0.1}))
    return str(p)


def _corrupt_prompt(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "prompt.safetensors").write_bytes(b"garbage" * 9)
    return str(d)


def _foreign_prompt(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    save_file({"lm_head.weight": torch.ones(2, 2)}, str(d / "prompt.safetensors"))
    return str(d)


def _pickle_prompt(tmp_path):
    p = tmp_path / "prompt.pt"
    torch.save({"prompt": torch.ones(4, 32)}, p)
    return str(p)


TRAIN_CASES = {
    "unknown task": (lambda t: ["--task", "nope"], "unknown task 'nope'"),
    "unknown model": (lambda t: ["--model", str(t / "no_such_model")], "cannot load model"),
    "unknown tiny arch": (lambda t: ["--model", "tiny:nope"], "unknown tiny architecture 'nope'"),
    "missing data dir": (lambda t: ["--data_dir", str(t / "missing")], "missing"),
    "empty dataset": (lambda t: ["--data_dir", _empty_data(t)], "empty"),
    "prompt width": (lambda t: ["--init", _narrow_prompt(t)], "d=16 but the model expects 32"),
    "bad init": (lambda t: ["--init", "zeros"], "unknown --init 'zeros'"),
    "bad config key": (lambda t: ["--config", _bad_config(t)], r"unknown config key\(s\) lrr"),
    "bad flag": (lambda t: ["--lrr", "0.1"], r"unknown flag --lrr for `ds-prompt train`: did you mean --lr\?"),
    "wrong type": (lambda t: ["--max_steps", "many"], "--max_steps 'many' is not a valid int"),
    "negative": (lambda t: ["--lr", "-1"], "--lr must be > 0"),
    "none for a required value": (lambda t: ["--max_steps", "None"], "--max_steps cannot be None"),
    "bad deepspeed": (lambda t: ["--deepspeed", "zero9"], "--deepspeed 'zero9'"),
    "indivisible batch": (lambda t: ["--batch_size", "8", "--grad_accum", "3"], "not divisible"),
    "non-finite loss": (lambda t: ["--lr", "1e30", "--max_steps", "6", "--log_every", "1"], "non-finite|became"),
    "unwritable output": (lambda t: ["--output_dir", "/proc/ds_prompt_out"], "not writable"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_input_gives_one_error_line(case, tmp_path, capsys):
    extra, needle = TRAIN_CASES[case]
    out = tmp_path / "out"
    args = extra(tmp_path)
    argv = ["train"] + BASE + ["--output_dir", str(out)] + args
    code, errors = run(argv, capsys)
    assert code != 0, case
    assert len(errors) == 1, errors
    import re
    assert re.search(needle, errors[0]), errors[0]
    assert not (out / "prompt.safetensors").exists() and not (out / "metrics.json").exists()


EVAL_CASES = {
    "corrupt prompt": (_corrupt_prompt, "corrupt"),
    "foreign prompt": (_foreign_prompt, "no 'prompt' tensor"),
    "pickle prompt": (_pickle_prompt, "never unpickles"),
    "missing prompt": (lambda t: str(t / "nothing.safetensors"), "does not exist"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_evaluate_and_export_bad_prompt_files(case, tmp_path, capsys):
    make, needle = EVAL_CASES[case]
    path = make(tmp_path)
    for argv in (["evaluate", "--prompt", path, "--task", "demo"],
                 ["export", "--prompt", path, "--format", "peft", "--output_dir", str(tmp_path / "exp")]):
        code, errors = run(argv, capsys)
        assert code != 0 and len(errors) == 1 and needle in errors[0], (argv, errors)
    assert not (tmp_path / "exp" / "adapter_model.safetensors").exists()


def test_export_unknown_format(tmp_path, capsys):
    code, errors = run(["export", "--prompt", "x", "--format", "onnx", "--output_dir", str(tmp_path)], capsys)
    assert code != 0 and "unknown --format 'onnx'" in errors[0]


def test_evaluate_reads_the_data_dir_recorded_in_prompt_json(tmp_path, capsys):
    """prompt.json records --data_dir (and lr, batch size, quantization); `evaluate` uses it when none is given."""
    from ds_prompt.data.loading import DEMO_DIR
    data = tmp_path / "mydemo"
    data.mkdir()
    (data / "train.jsonl").write_text((DEMO_DIR / "train.jsonl").read_text())
    (data / "validation.jsonl").write_text("".join((DEMO_DIR / "validation.jsonl").read_text().splitlines(True)[:20]))
    out = tmp_path / "run"
    assert main(["train"] + BASE + ["--output_dir", str(out), "--data_dir", str(data)]) == 0
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["data_dir"] == str(data) and meta["lr"] == 3e-3 and meta["batch_size"] == 8
    assert meta["quantization"] == "none" and meta["metrics"]["metric"] == "accuracy"
    capsys.readouterr()
    assert main(["evaluate", "--prompt", str(out)]) == 0
    result = json.loads((out / "eval_demo.json").read_text())
    assert result["n"] == 20 and result["data_dir"] == str(data)  # the recorded folder: 20, not the demo 160
    assert {"f1", "matthews"} <= set(result)


def test_predict_writes_one_line_per_example_consistent_with_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train"] + BASE + ["--output_dir", str(out)]) == 0
    assert main(["evaluate", "--prompt", str(out), "--limit", "16"]) == 0
    evaluated = json.loads((out / "eval_demo.json").read_text())
    preds_path = tmp_path / "preds" / "demo.jsonl"
    assert main(["predict", "--prompt", str(out), "--output", str(preds_path), "--limit", "16"]) == 0
    rows = [json.loads(line) for line in preds_path.read_text().splitlines()]
    assert len(rows) == 16 and [r["id"] for r in rows] == list(range(16))
    for r in rows:
        assert set(r) == {"id", "text", "label", "predicted", "probabilities"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / 16
    assert accuracy == pytest.approx(evaluated["accuracy"])  # the same subset, the same model
    assert f"accuracy {accuracy:.4f} on the 16 labeled" in capsys.readouterr().out
    unlabeled = tmp_path / "mine.jsonl"  # the user's own texts: no label, own ids
    unlabeled.write_text("".join(json.dumps({"id": f"x{i}", "text": r["text"]}) + "\n"
                                 for i, r in enumerate(rows[:3])))
    argv = ["predict", "--prompt", str(out), "--input", str(unlabeled), "--output", str(tmp_path / "p2.jsonl")]
    assert main(argv) == 0
    again = [json.loads(line) for line in (tmp_path / "p2.jsonl").read_text().splitlines()]
    assert [r["id"] for r in again] == ["x0", "x1", "x2"] and all(r["label"] is None for r in again)
    assert [r["predicted"] for r in again] == [r["predicted"] for r in rows[:3]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    code, errors = run(["predict", "--prompt", str(out), "--input", str(bad), "--output", str(tmp_path / "p3.jsonl")],
                       capsys)
    assert code == 2 and f"{bad}:2: missing field 'text'" in errors[0] and not (tmp_path / "p3.jsonl").exists()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_generate_equals_greedy_decoding_of_the_plain_hf_model_with_the_prompt(arch, tmp_path, capsys):
    """`ds-prompt generate` matches a hand-written greedy loop over the unmodified HF model fed
    [prompt; text] embeddings (decoder-only: the growing sequence; T5: the encoder input)."""
    from ds_prompt.models.tiny import build_tiny
    from ds_prompt.recipes.inference import generate_texts
    model, tok = build_tiny(arch)
    prompt = torch.randn(4, model.config.hidden_size if arch != "t5" else model.config.d_model) * 0.5
    save_prompt(tmp_path / "p", prompt, {"backbone": f"tiny:{arch}", "task": "demo",
                                         "family": "seq2seq" if arch == "t5" else "causal"})
    text = "the movie was a total delight"
    got = generate_texts(str(tmp_path / "p"), [text], max_new_tokens=6, dtype="fp32")[0]["token_ids"]
    ids = tok(text, return_tensors="pt")["input_ids"]
    emb = model.get_input_embeddings()
    x = torch.cat([prompt[None], emb(ids)], 1)
    want = []
    with torch.no_grad():
        if arch == "t5":
            enc = model.get_encoder()(inputs_embeds=x).last_hidden_state
            dec = torch.tensor([[model.config.decoder_start_token_id]])
            for _ in range(6):
                logits = model(encoder_outputs=(enc,), decoder_input_ids=dec).logits[0, -1]
                nxt = int(logits.argmax())
                want.append(nxt)
                if nxt == model.config.eos_token_id:
                    break
                dec = torch.cat([dec, torch.tensor([[nxt]])], 1)
        else:
            for _ in range(6):
                nxt = int(model(inputs_embeds=x).logits[0, -1].argmax())
                want.append(nxt)
                if nxt == model.config.eos_token_id:
                    break
                x = torch.cat([x, emb(torch.tensor([[nxt]]))], 1)
    assert got == want
    assert main(["generate", "--prompt", str(tmp_path / "p"), "--text", text, "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == tok.decode(want, skip_special_tokens=True).strip()


def test_generate_refuses_encoders_and_bad_inputs(tmp_path, capsys):
    save_prompt(tmp_path / "p", torch.randn(4, 32), {"backbone": "tiny:bert", "task": "demo", "family": "mlm"})
    code, errors = run(["generate", "--prompt", str(tmp_path / "p"), "--text", "hi"], capsys)
    assert code == 2 and "needs a causal or seq2seq backbone" in errors[0]
    code, errors = run(["generate", "--prompt", str(tmp_path / "p")], capsys)
    assert code == 2 and "exactly one of --text" in errors[0]


def test_custom_task_file_trains_and_later_commands_rebuild_it(tmp_path, capsys):
    """`--task my_task.yaml` (and a `task:` mapping in --config) defines a task; prompt.json records its
    mapping, so evaluate/predict work in a new process without the file."""
    import yaml

    from ds_prompt.data import tasks
    from ds_prompt.data.loading import DEMO_DIR
    spec = {"name": "moviemood", "text_fields": ["text"], "labels": ["negative", "positive"],
            "label_words": [["bad"], ["good"]], "template": "{text} Overall it was {mask}.", "metric": "f1"}
    task_file = tmp_path / "moviemood.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    argv = ["train", *BASE, "--task", str(task_file), "--data_dir", str(DEMO_DIR), "--output_dir", str(out)]
    assert main(argv) == 0
    meta = json.loads((out / "prompt.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert meta["task"] == "moviemood" and meta["task_spec"]["template"] == spec["template"]
    assert metrics["metric"] == "f1"
    del tasks._REGISTRY[tasks._lookup_key("moviemood")]  # as in a fresh process
    assert main(["evaluate", "--prompt", str(out)]) == 0
    assert json.loads((out / "eval_moviemood.json").read_text())["accuracy"] == pytest.approx(metrics["accuracy"])
    del tasks._REGISTRY[tasks._lookup_key("moviemood")]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": dict(spec, name="moviemood2"), "data_dir": str(DEMO_DIR)}))
    assert main(["train", *BASE[:2], *BASE[4:], "--config", str(config), "--output_dir", str(tmp_path / "r2")]) == 0
    assert json.loads((tmp_path / "r2" / "prompt.json").read_text())["task"] == "moviemood2"
    clash = tmp_path / "sst2.yaml"
    clash.write_text(yaml.safe_dump(dict(spec, name="sst2")))
    code, errors = run(["train", *BASE, "--task", str(clash)], capsys)
    assert code == 2 and "a built-in task's name" in errors[0]
