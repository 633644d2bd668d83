"""Prompted forward vs a plain-PyTorch reference: each example alone, unpadded, through the full HF model
with full-vocab logits, restricted to the label ids afterwards."""
import pytest
import torch
import torch.nn.functional as F

from ds_prompt.models.family import Family
from ds_prompt.models.heads import class_matrix, label_word_ids
from tests.helpers import PAIR_TASK, SENTENCES, batch_of, prompted_tiny

LM_ARCHS = ["bert", "roberta", "electra", "gpt2", "llama", "qwen2", "t5", "t5_gated"]


def reference_logits(bb, model, encoded):
    """Per example: [prompt; token embeddings] through the whole HF model, full vocab, then label ids."""
    hf, P = bb.model, model.prompt.weight.detach()
    ids, mat = class_matrix(label_word_ids(bb.tokenizer, PAIR_TASK.label_words))
    rows = []
    for e in encoded:
        x = torch.tensor([e.input_ids])
        emb = torch.cat([P[None], hf.get_input_embeddings()(x)], 1)
        if bb.family is Family.SEQ2SEQ:
            start = torch.tensor([[hf.config.decoder_start_token_id]])
            vocab_logits = hf(inputs_embeds=emb, decoder_input_ids=start).logits[0, 0]
        elif bb.family is Family.CAUSAL:
            vocab_logits = hf(inputs_embeds=emb).logits[0, -1]
        else:
            vocab_logits = hf(inputs_embeds=emb).logits[0, P.shape[0] + e.score_index]
        rows.append(vocab_logits[ids] @ mat.T)
    return torch.stack(rows)


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_batched_prompted_logits_equal_unpadded_full_vocab_reference(arch):
    bb, model, enc = prompted_tiny(arch)
    encoded, batch = batch_of(bb, enc, SENTENCES)
    lengths = {len(e.input_ids) for e in encoded}
    assert len(lengths) > 1, "examples must differ in length so padding is exercised"
    with torch.no_grad():
        got = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
        want = reference_logits(bb, model, encoded)
    assert got.shape == (len(SENTENCES), 3)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_mlm_mask_slot_and_causal_left_padding():
    bb, _, enc = prompted_tiny("bert")
    encoded, batch = batch_of(bb, enc, SENTENCES)
    for e in encoded:
        assert e.input_ids[e.score_index] == bb.tokenizer.mask_token_id
    bb, _, enc = prompted_tiny("gpt2")
    _, batch = batch_of(bb, enc, SENTENCES)
    assert (batch["attention_mask"][:, -1] == 1).all(), "causal rows must end at the last column"
    assert (batch["attention_mask"][:, 0] == 0).any(), "shorter causal rows are padded on the left"


def test_encoder_similarity_head_matches_manual_cosine():
    bb, model, enc = prompted_tiny("bert_encoder")
    encoded, batch = batch_of(bb, enc, SENTENCES)
    P = model.prompt.weight.detach()
    with torch.no_grad():
        got = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
        label_emb = []
        for text in PAIR_TASK.label_descriptions:
            ids = bb.tokenizer(text, return_tensors="pt")["input_ids"]
            label_emb.append(bb.model(input_ids=ids).last_hidden_state[0].mean(0))
        label_emb = F.normalize(torch.stack(label_emb), dim=-1)
        want = []
        for e in encoded:
            x = torch.tensor([e.input_ids])
            h = bb.model(inputs_embeds=torch.cat([P[None], bb.model.get_input_embeddings()(x)], 1))
            pooled = F.normalize(h.last_hidden_state[0].mean(0), dim=-1)
            want.append(pooled @ label_emb.T / 0.05)
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5", "bert_encoder"])
def test_gradient_reaches_only_the_prompt(arch):
    bb, model, enc = prompted_tiny(arch)
    _, batch = batch_of(bb, enc, SENTENCES, labels=[0, 1, 2, 0])
    logits = model(batch["input_ids"], batch["attention_mask"], batch["score_index"])
    F.cross_entropy(logits, batch["labels"]).backward()
    assert model.prompt.weight.grad is not None and model.prompt.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("prompt"))
    assert [n for n, _ in model.trainable_named_parameters] == ["prompt.weight"]


def test_multi_token_label_word_is_mean_of_subtokens():
    bb, _, _ = prompted_tiny("bert")
    ids = label_word_ids(bb.tokenizer, (("unbelievably",), ("yes",)))
    assert len(ids[0][0]) > 1, "pick a word WordPiece splits"
    unique, mat = class_matrix(ids)
    logits = torch.randn(2, len(unique))
    sub = [unique.tolist().index(t) for t in ids[0][0]]
    torch.testing.assert_close((logits @ mat.T)[:, 0], logits[:, sub].mean(1))


def test_train_mode_never_reaches_the_frozen_backbone():
    """engine.train() after an evaluation must not switch dropout back on in the frozen model."""
    bb, model, _ = prompted_tiny("bert")
    model.eval()
    model.train()
    assert model.training and model.prompt.training
    assert not any(m.training for m in model.backbone.modules())


@pytest.mark.parametrize("arch", ["t5", "t5_gated"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_t5_factored_cross_attention_equals_the_standard_path(arch, checkpointing, monkeypatch):
    """The one-query cross-attention (keys/values never projected) is used in every decoder layer and gives
    the HF path's logits and prompt gradient on a padded batch, also when backward recomputes the layers
    (activation checkpointing)."""
    from ds_prompt.models import t5_step
    from ds_prompt.models.checkpointing import enable_activation_checkpointing
    bb, model, enc = prompted_tiny(arch)
    decoder = bb.model.get_decoder()
    assert all(type(b.layer[1].EncDecAttention).__name__.startswith("Factored") for b in decoder.block)
    if checkpointing:
        enable_activation_checkpointing(bb.model)
    _, batch = batch_of(bb, enc, SENTENCES, labels=[0, 1, 2, 0])
    args = (batch["input_ids"], batch["attention_mask"], batch["score_index"])
    calls = []
    real = t5_step.one_query_cross_attention
    monkeypatch.setattr(t5_step, "one_query_cross_attention", lambda *a: calls.append(1) or real(*a))
    model.train()

    def logits_and_grad():
        model.zero_grad()
        logits = model(*args)
        F.cross_entropy(logits, batch["labels"]).backward()
        return logits.detach(), model.prompt.weight.grad.clone()

    fast = logits_and_grad()
    assert len(calls) == len(decoder.block) * (2 if checkpointing else 1)
    monkeypatch.setattr(t5_step, "_eligible", lambda attn: False)
    standard = logits_and_grad()
    assert len(calls) == len(decoder.block) * (2 if checkpointing else 1), "the standard path was not taken"
    torch.testing.assert_close(fast[0], standard[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], standard[1], atol=1e-6, rtol=1e-5)


def test_t5_factored_cross_attention_reads_the_eager_additive_mask(monkeypatch):
    """Eager attention hands the layer an additive float mask (SDPA a boolean one, or None): same logits."""
    from ds_prompt.models import t5_step
    bb, model, enc = prompted_tiny("t5")
    bb.model.set_attn_implementation("eager")
    _, batch = batch_of(bb, enc, SENTENCES)
    args = (batch["input_ids"], batch["attention_mask"], batch["score_index"])
    seen = []
    real = t5_step.one_query_cross_attention
    monkeypatch.setattr(t5_step, "one_query_cross_attention",
                        lambda a, h, e, m: seen.append(m.dtype) or real(a, h, e, m))
    with torch.no_grad():
        fast = model(*args)
        monkeypatch.setattr(t5_step, "_eligible", lambda attn: False)
        standard = model(*args)
    assert seen and seen[0] == torch.float32
    torch.testing.assert_close(fast, standard, atol=1e-5, rtol=1e-5)


def test_t5_factored_cross_attention_skips_partitioned_and_quantized_projections():
    from ds_prompt.models import t5_step
    bb, _, _ = prompted_tiny("t5")
    attn = bb.model.get_decoder().block[0].layer[1].EncDecAttention
    assert t5_step._eligible(attn)
    attn.k.weight.ds_id = 0  # what ZeRO-3 marks a partitioned parameter with
    assert not t5_step._eligible(attn)
    del attn.k.weight.ds_id

    class QuantLinear(torch.nn.Linear):  # bitsandbytes layers subclass nn.Linear
        pass
    attn.v = QuantLinear(attn.v.in_features, attn.v.out_features, bias=False)
    assert not t5_step._eligible(attn)
