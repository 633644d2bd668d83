"""bitsandbytes 8-bit / 4-bit (nf4) frozen backbones: the fp32 prompt's gradient stays fp32, finite and close
to the full-precision backbone's."""
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
