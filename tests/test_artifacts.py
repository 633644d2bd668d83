"""Prompt artifacts, PEFT interop, and reading frozen rows of ZeRO-3-partitioned models."""
import json

import pytest
import torch

from ds_prompt.artifacts import export_peft, load_prompt, save_prompt
from ds_prompt.errors import UserError
from ds_prompt.models.soft_prompt import init_prompt_tensor
from ds_prompt.models.tiny import build_tiny


def test_save_load_roundtrip_keeps_values_and_metadata(tmp_path):
    prompt = torch.randn(7, 32)
    save_prompt(tmp_path, prompt, {"backbone": "tiny:bert", "task": "demo", "head": "LinearHead",
                                   "labels": ["negative", "positive"]},
                {"head.linear.weight": torch.ones(2, 32), "head.linear.bias": torch.zeros(2)})
    got, meta, extra = load_prompt(tmp_path)
    assert torch.equal(got, prompt) and meta["prompt_length"] == 7 and meta["d_model"] == 32
    assert meta["format"] == "ds_prompt.prompt/1" and torch.equal(extra["head.linear.weight"], torch.ones(2, 32))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_peft_export_loads_in_peft_and_peft_adapter_loads_here(tmp_path):
    peft = pytest.importorskip("peft")
    model, _ = build_tiny("gpt2")
    ours = torch.randn(6, 32)
    export_peft(ours, {"backbone": "tiny:gpt2", "family": "causal"}, tmp_path / "exported", model.config)
    loaded = peft.PeftModel.from_pretrained(model, str(tmp_path / "exported"))
    theirs = loaded.get_prompt_embedding_to_save(adapter_name="default")
    torch.testing.assert_close(theirs.float(), ours)

    fresh, _ = build_tiny("gpt2")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    pm = peft.get_peft_model(fresh, config)
    pm.save_pretrained(str(tmp_path / "from_peft"))
    want = pm.get_prompt_embedding_to_save(adapter_name="default").float()
    got, meta, _ = load_prompt(tmp_path / "from_peft")
    torch.testing.assert_close(got, want)
    assert meta["source"] == "peft"
    emb = fresh.get_input_embeddings()
    torch.testing.assert_close(init_prompt_tensor(f"file:{tmp_path / 'from_peft'}", 5, emb, None, 0), want)


def test_exported_adapter_reads_back_its_task_facts_and_refuses_a_linear_head(tmp_path):
    """export_peft -> load_prompt gives back the facts evaluation needs (backbone, task, labels, template,
    quantization, ...). An adapter whose adapter_config.json was re-pointed at another base loads that base, without
    the old backbone's identity. A linear head cannot travel in a PEFT adapter: refused at export, and an adapter
    that says it had one (written before the refusal) still initializes a prompt, but is not scored, indexed or
    re-exported without the head."""
    from safetensors.torch import save_file

    from ds_prompt.recipes.inference import prompted_from_artifact
    meta = {"backbone": "smollm2", "backbone_path": "/cache/gguf/abc", "backbone_source": {"sha256": "f" * 64},
            "quantization": "int8", "task": "sst2", "labels": ["negative", "positive"],
            "label_words": [" bad", " good"], "template": "{text} It was", "family": "causal",
            "head": "LabelWordHead", "max_length": 96, "seed": 43, "init": "vocab", "metrics": {"accuracy": 0.9}}
    prompt = torch.randn(4, 32)
    export_peft(prompt, meta, tmp_path / "a")
    got, back, extra = load_prompt(tmp_path / "a")
    assert torch.equal(got, prompt) and extra == {}
    assert back == {**{k: v for k, v in meta.items() if k not in ("init", "metrics")}, "source": "peft"}

    config_path = tmp_path / "a" / "adapter_config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), base_model_name_or_path="/new/m")))
    _, moved, _ = load_prompt(tmp_path / "a")
    assert moved["backbone"] == moved["backbone_path"] == "/new/m" and moved["task"] == "sst2"
    assert "backbone_source" not in moved and "quantization" not in moved

    with pytest.raises(UserError, match="linear head"):
        export_peft(prompt, dict(meta, head="LinearHead"), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    old = tmp_path / "old"  # as exports before the refusal wrote it
    export_peft(prompt, meta, old)
    facts = dict(meta, head="LinearHead", backbone="tiny:bert", family="encoder")
    del facts["backbone_path"], facts["quantization"]
    save_file({"prompt_embeddings": prompt}, str(old / "adapter_model.safetensors"),
              metadata={"format": "pt", "ds_prompt": json.dumps(facts)})
    emb = build_tiny("bert")[0].get_input_embeddings()
    assert torch.equal(init_prompt_tensor(f"file:{old}", 4, emb, None, 0), prompt)  # still an initialization
    for use in (load_prompt, prompted_from_artifact, lambda p: export_peft(*load_prompt(p)[:2], tmp_path / "re")):
        with pytest.raises(UserError, match="linear head"):  # scored, indexed, exported: refused
            use(str(old))
    save_file({"prompt_embeddings": prompt}, str(old / "adapter_model.safetensors"), metadata={"ds_prompt": "{oops"})
    with pytest.raises(UserError, match="not valid JSON"):
        load_prompt(old)


def test_zero3_partitioned_embedding_rows_are_gathered_for_init_and_label_words():
    """peft#206: ZeRO-3 partitions embeddings to shape 0; vocab/text init and label rows must gather them."""
    import deepspeed

    from ds_prompt.engine.setup import init_distributed
    from ds_prompt.models.heads import LabelWordHead
    init_distributed()
    plain, tok = build_tiny("bert")
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    sharded, _ = build_tiny("bert")
    deepspeed.zero.Init(module=sharded, config_dict_or_path=config)
    emb = sharded.get_input_embeddings()
    assert hasattr(emb.weight, "ds_id") and emb.weight.numel() == 0, "weights should be partitioned"
    for spec in ("vocab", "text:rate the review"):
        want = init_prompt_tensor(spec, 5, plain.get_input_embeddings(), tok, 3)
        torch.testing.assert_close(init_prompt_tensor(spec, 5, emb, tok, 3), want)
    words = (("bad",), ("good", "great"))
    a, b = LabelWordHead.from_model(sharded, tok, words), LabelWordHead.from_model(plain, tok, words)
    torch.testing.assert_close(a.word_weight, b.word_weight)
    torch.testing.assert_close(a.word_bias, b.word_bias)


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_bytes(b"\x00not safetensors"), "corrupt"),
    (lambda p: __import__("safetensors.torch").torch.save_file({"weights": torch.ones(2)}, str(p)), "no 'prompt'"),
])
def test_corrupt_or_foreign_prompt_files_are_clear_errors(tmp_path, make, needle):
    path = tmp_path / "prompt.safetensors"
    make(path)
    with pytest.raises(UserError, match=needle):
        load_prompt(path)


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "prompt.pt"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    import pickle
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="never unpickles"):
        load_prompt(path)
    assert not marker.exists()


def test_width_and_length_mismatch_name_the_fix(tmp_path):
    model, tok = build_tiny("bert")
    save_prompt(tmp_path / "p", torch.randn(4, 16), {"backbone": "x"})
    with pytest.raises(UserError, match="d=16 but the model expects 32.*projector"):
        init_prompt_tensor(f"file:{tmp_path / 'p'}", 4, model.get_input_embeddings(), tok, 0)
    save_prompt(tmp_path / "q", torch.randn(4, 32), {"backbone": "x"})
    with pytest.raises(UserError, match="--prompt_length 4"):
        init_prompt_tensor(f"file:{tmp_path / 'q'}", 9, model.get_input_embeddings(), tok, 0)
    assert json.loads((tmp_path / "q" / "prompt.json").read_text())["d_model"] == 32


def test_exported_adapter_names_the_real_base_model_for_auto_peft(tmp_path):
    """A run on a model folder records its path; the exported adapter points AutoPeftModelForCausalLM at it and
    carries the task, labels, label words and template in its safetensors metadata."""
    import json

    from safetensors import safe_open

    from ds_prompt.cli import main
    from ds_prompt.models.tiny import build_tiny
    peft = pytest.importorskip("peft")
    model, tok = build_tiny("gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    run = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "gpt2"), "--task", "demo", "--max_steps", "2", "--batch_size",
                 "8", "--train_limit", "16", "--eval_limit", "8", "--prompt_length", "4", "--progress", "False",
                 "--output_dir", str(run)]) == 0
    assert main(["export", "--prompt", str(run), "--output_dir", str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "gpt2")
    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    prompt, _, _ = load_prompt(run)
    torch.testing.assert_close(loaded.prompt_encoder["default"].embedding.weight.detach(), prompt)
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        facts = json.loads(f.metadata()["ds_prompt"])
    assert facts["task"] == "demo" and facts["labels"] == ["negative", "positive"]
    assert facts["template"] and facts["label_words"]
