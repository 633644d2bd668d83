"""Tiny random-init models of every supported architecture, built from configs in code.

They exercise every family's code path offline in seconds (2 layers, d=32). All share the WordPiece
tokenizer of the packaged all-MiniLM-L6-v2, so no hub access is needed. Use ``--model tiny:<arch>``.
"""
from __future__ import annotations

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    ElectraConfig,
    ElectraForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)

from ds_prompt.errors import UserError
from ds_prompt.models.packaged import packaged_minilm_path

D_MODEL, N_LAYERS, N_HEADS, D_FF = 32, 2, 2, 64


def _encoder_kwargs(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                intermediate_size=D_FF, max_position_embeddings=256, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)


def _decoder_kwargs(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                num_key_value_heads=1, intermediate_size=D_FF, max_position_embeddings=256, pad_token_id=0,
                bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)


def _build(arch: str, vocab: int):
    if arch == "bert":
        return BertForMaskedLM(BertConfig(**_encoder_kwargs(vocab)))
    if arch == "bert_encoder":
        return BertModel(BertConfig(**_encoder_kwargs(vocab)))
    if arch == "roberta":
        kw = _encoder_kwargs(vocab) | dict(max_position_embeddings=258, pad_token_id=0)
        return RobertaForMaskedLM(RobertaConfig(**kw))
    if arch == "electra":
        kw = _encoder_kwargs(vocab) | dict(embedding_size=16)
        return ElectraForMaskedLM(ElectraConfig(**kw))
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                                          n_inner=D_FF, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0, bos_token_id=101, eos_token_id=102))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**_decoder_kwargs(vocab)))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**_decoder_kwargs(vocab)))
    if arch in ("t5", "t5_gated"):
        return T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=D_MODEL, d_kv=D_MODEL // N_HEADS, d_ff=D_FF, num_layers=N_LAYERS,
            num_heads=N_HEADS, dropout_rate=0.0, pad_token_id=0, eos_token_id=102, decoder_start_token_id=0,
            feed_forward_proj="gated-gelu" if arch == "t5_gated" else "relu",
            tie_word_embeddings=arch == "t5"))
    raise UserError(f"unknown tiny architecture '{arch}': use one of {', '.join(TINY_ARCHS)}")


TINY_ARCHS = ("bert", "bert_encoder", "roberta", "electra", "gpt2", "llama", "qwen2", "t5", "t5_gated")


def tiny_tokenizer():
    """The packaged MiniLM WordPiece tokenizer, with BOS/EOS set so causal and seq2seq paths have them."""
    tok = AutoTokenizer.from_pretrained(packaged_minilm_path())
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    return tok


def build_tiny(arch: str, seed: int = 0):
    """(model, tokenizer) for a tiny random-init `arch`; weights depend only on `seed`."""
    tok = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _build(arch, len(tok))
    model.config.name_or_path = f"tiny:{arch}"
    return model.eval(), tok
