"""Exact compute shortcuts (models.shortcuts): the last layer at the scoring position and the causal shared
prompt prefix give the full forward's logits and prompt gradient, per architecture, with padding; and they
really skip the work (fewer FLOPs, counted by torch's FlopCounterMode)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ds_prompt.models.checkpointing import enable_activation_checkpointing
from ds_prompt.models.shortcuts import can_share_prefix, eligible, full_forward
from tests.helpers import SENTENCES, batch_of, prompted_tiny

SHORTCUT_ARCHS = ("bert", "roberta", "electra", "gpt2", "llama", "qwen2")


def _logits_and_grad(model, batch, shortcuts):
    model.shortcuts = shortcuts
    model.prompt.weight.grad = None
    logits = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()  # a loss touching every class
    return logits.detach(), model.prompt.weight.grad.clone()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("arch", SHORTCUT_ARCHS)
def test_shortcuts_give_the_full_forwards_logits_and_prompt_gradient(arch, checkpointing):
    bb, model, enc = prompted_tiny(arch)
    assert eligible(bb.model)
    if checkpointing:
        enable_activation_checkpointing(bb.model)
    _, batch = batch_of(bb, enc, SENTENCES)
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded"
    full_logits, full_grad = _logits_and_grad(model, batch, False)
    fast_logits, fast_grad = _logits_and_grad(model, batch, True)
    torch.testing.assert_close(fast_logits, full_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-6)
    assert full_grad.abs().sum() > 0
    # the shared prefix is used exactly where it is exact and safe: causal, one prompt, no checkpointing
    assert can_share_prefix(bb.model) == (bb.family.value == "causal" and not checkpointing)


@pytest.mark.parametrize("arch,saving", [("bert", 0.30), ("llama", 0.30)])
def test_shortcuts_compute_less(arch, saving):
    """The last layer's queries/FFN on one position (and, causal, the prefix once) cut the counted training
    FLOPs (forward and the prompt's backward) of a 2-layer model by more than `saving`."""
    bb, model, enc = prompted_tiny(arch, prompt_length=20)
    _, batch = batch_of(bb, enc, SENTENCES)
    counts = {}
    for shortcuts in (False, True):
        model.shortcuts = shortcuts
        with FlopCounterMode(display=False) as counter:
            model(batch["input_ids"], batch["attention_mask"], batch["score_index"]).sum().backward()
        counts[shortcuts] = counter.get_total_flops()
    assert counts[True] < (1 - saving) * counts[False], counts


def test_full_forward_switches_off_and_restores():
    bb, model, enc = prompted_tiny("llama")
    with full_forward(model):
        assert model.shortcuts is False
    assert model.shortcuts is True


def test_uncovered_architectures_take_the_full_path():
    bb, model, enc = prompted_tiny("t5")
    assert not eligible(bb.model) and not can_share_prefix(bb.model)
    _, batch = batch_of(bb, enc, SENTENCES)
    a = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
    model.shortcuts = False
    torch.testing.assert_close(a, model(batch["input_ids"], batch["attention_mask"], batch["score_index"]))
