"""Activation checkpointing of a frozen eval-mode backbone: same logits, same prompt gradient."""
import pytest
import torch
import torch.nn.functional as F

from ds_prompt.models.checkpointing import CheckpointedLayer, enable_activation_checkpointing
from tests.helpers import SENTENCES, batch_of, prompted_tiny


@pytest.mark.parametrize("arch", ["bert", "bert_encoder", "gpt2", "llama", "qwen2", "t5", "t5_gated", "roberta"])
def test_checkpointed_layers_give_identical_logits_and_gradients(arch):
    bb, model, enc = prompted_tiny(arch)
    _, batch = batch_of(bb, enc, SENTENCES, labels=[0, 1, 2, 0])

    def loss_and_grad():
        model.prompt.weight.grad = None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
        F.cross_entropy(logits, batch["labels"]).backward()
        return logits.detach(), model.prompt.weight.grad.clone()

    ref_logits, ref_grad = loss_and_grad()
    wrapped = enable_activation_checkpointing(bb.model)
    assert wrapped >= 2 and any(isinstance(m, CheckpointedLayer) for m in bb.model.modules())
    logits, grad = loss_and_grad()
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
