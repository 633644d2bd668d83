"""bitsandbytes 8-bit / 4-bit (nf4) frozen backbones: the fp32 prompt's gradient stays fp32, finite and close
to the full-precision backbone's; alone, after evaluations, and partitioned by ZeRO-3 (with and without offload)
across 2 ranks with the same result as 1 rank."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from ds_prompt.builders import build_prompted
from ds_prompt.data.encoding import collate
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.models.backbone import load_backbone
from ds_prompt.models.tiny import build_tiny

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    model, tok = build_tiny("gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _loss_and_grad(path, quantization):
    task = get_task("demo")
    bb = load_backbone(path, dtype="fp32", quantization=quantization)
    built = build_prompted(bb, task, 4, 64, "auto", "normal:0.02", 0)
    batch = collate([built.encoder.encode(e) for e in load_examples(task, "train", None, limit=16)],
                    bb.tokenizer.pad_token_id, True)
    loss = F.cross_entropy(built.model(batch["input_ids"], batch["attention_mask"], batch["score_index"]),
                           batch["labels"])
    loss.backward()
    quantized = [type(m).__name__ for m in bb.model.modules() if "bit" in type(m).__name__.lower()]
    return loss.item(), built.model.prompt.weight.grad, quantized


@pytest.mark.parametrize("quantization,min_cos", [("int8", 0.99), ("nf4", 0.8)])
def test_quantized_backbone_prompt_gradient_is_fp32_finite_and_close(saved_gpt2, quantization, min_cos):
    ref_loss, ref_grad, none = _loss_and_grad(saved_gpt2, "none")
    loss, grad, quantized = _loss_and_grad(saved_gpt2, quantization)
    assert not none and quantized, "the backbone's linears must be bitsandbytes modules"
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert abs(loss - ref_loss) < 0.05
    assert F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > min_cos


def test_nf4_backbone_trains_after_an_evaluation(saved_gpt2):
    """bitsandbytes repacks 4-bit weights in place for CPU inference on their first no_grad call; the packed
    layout has no backward. The backbone must stay trainable after an evaluation pass."""
    task = get_task("demo")
    bb = load_backbone(saved_gpt2, dtype="fp32", quantization="nf4")
    built = build_prompted(bb, task, 4, 64, "auto", "normal:0.02", 0)
    batch = collate([built.encoder.encode(e) for e in load_examples(task, "train", None, limit=8)],
                    bb.tokenizer.pad_token_id, True)
    args = (batch["input_ids"], batch["attention_mask"], batch["score_index"])
    with torch.no_grad():
        before = built.model(*args)
    loss = F.cross_entropy(built.model(*args), batch["labels"])
    loss.backward()
    with torch.no_grad():
        after = built.model(*args)
    assert torch.equal(before, after), "the evaluation must not change the quantized weights"
    grad = built.model.prompt.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.multiproc
@pytest.mark.parametrize("quantization,stage", [("int8", "zero3_cpu"), ("nf4", "zero3_offload_cpu")])
def test_quantized_backbone_under_two_rank_zero3_matches_one_rank(saved_gpt2, tmp_path, quantization, stage):
    """The quantized weights are partitioned by ZeRO-3 (persistence threshold 0, so every one is), gathered
    for each use and left bitwise unchanged; the fp32 prompt ends equal to a 1-rank ZeRO-0 run's."""
    from safetensors.torch import load_file

    from ds_prompt.config import TrainConfig, build_config
    from ds_prompt.engine.setup import load_ds_config
    from ds_prompt.recipes.prompt_tuning import train
    from tests.test_engine import _flags, _torchrun, load_scalars
    config = load_ds_config(stage)
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "ds.json").write_text(json.dumps(config))
    args = dict(model=saved_gpt2, quantization=quantization, task="demo", train_limit=64, eval_limit=32,
                batch_size=8, max_steps=6, prompt_length=4, lr=0.05, eval_every=0, log_every=1, progress=False)
    ref = train(build_config(TrainConfig, None, output_dir=str(tmp_path / "one"), deepspeed="zero0_cpu", **args))
    result = tmp_path / "result.json"
    _torchrun(2, ["tests/dist_scripts/train_and_check.py", str(result)]
              + _flags(dict(args, output_dir=tmp_path / "two", deepspeed=tmp_path / "ds.json")))
    r = json.loads(result.read_text())
    assert r["world_size"] == 2 and r["quantized_params"] > 0
    assert r["quantized_partitioned"] and r["backbone_unchanged"]
    grad_norms = list(load_scalars(tmp_path / "two" / "tb", "train/grad_norm"))
    assert len(grad_norms) == 6 and all(0 < g < float("inf") for g in grad_norms), grad_norms
    one = load_file(os.path.join(tmp_path / "one", "prompt.safetensors"))["prompt"]
    two = load_file(os.path.join(tmp_path / "two", "prompt.safetensors"))["prompt"]
    assert two.dtype == torch.float32
    torch.testing.assert_close(two, one, atol=1e-6, rtol=0)
    assert abs(r["accuracy"] - ref["accuracy"]) < 1e-9
