"""A tiny Llama GGUF written in the test (gguf's own writer): byte-level BPE tokenizer, 2 layers, d 64, with
Q8_0-quantized projection weights, so the GGUF path (dequantize, convert, cache) runs offline in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

D, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
MERGES = ("Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t")


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable unicode map, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def write_tiny_llama_gguf(path: str | Path, seed: int = 0, quantized: bool = True) -> Path:
    import gguf
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + _byte_symbols() + [m.replace(" ", "") for m in MERGES]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(256)
    writer.add_embedding_length(D)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(D // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantized else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(name: str, shape: tuple[int, ...], quantize: bool) -> None:
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        if quantize and quantized:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data)

    kv = D // HEADS * KV_HEADS
    tensor("token_embd.weight", (len(tokens), D), False)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", (D,), False)
        tensor(f"blk.{i}.attn_q.weight", (D, D), True)
        tensor(f"blk.{i}.attn_k.weight", (kv, D), True)
        tensor(f"blk.{i}.attn_v.weight", (kv, D), True)
        tensor(f"blk.{i}.attn_output.weight", (D, D), True)
        tensor(f"blk.{i}.ffn_norm.weight", (D,), False)
        tensor(f"blk.{i}.ffn_gate.weight", (FFN, D), True)
        tensor(f"blk.{i}.ffn_up.weight", (FFN, D), True)
        tensor(f"blk.{i}.ffn_down.weight", (D, FFN), True)
    tensor("output_norm.weight", (D,), False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
