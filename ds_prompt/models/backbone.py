"""Loading a frozen backbone: by hub name, local path, a ``.gguf`` file, the packaged MiniLM (``minilm``), the
packaged SmolLM2-135M (``smollm2``, a GGUF) or ``tiny:<arch>``."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch
from torch import nn

from ds_prompt.config import check_quantization
from ds_prompt.errors import UserError
from ds_prompt.models.family import Family, auto_model_class, detect_family, parse_family
from ds_prompt.models.gguf import SMOLLM2, resolve_model
from ds_prompt.models.packaged import packaged_minilm_path
from ds_prompt.models.tiny import build_tiny

DEFAULT_MODEL = "minilm"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def canonical_model(name: str | None) -> str | None:
    """`--model` as artifacts record and compare it: an existing local path (a model folder, a .gguf file) made
    absolute, so a prompt trained with `--model ./m.gguf` still finds its backbone when evaluated from another
    directory, and `./m.gguf` and its absolute spelling compare equal; aliases, tiny:<arch> and hub ids as
    given."""
    if not name or name in (DEFAULT_MODEL, SMOLLM2) or name.startswith("tiny:") or not os.path.exists(name):
        return name
    return os.path.abspath(name)


@dataclass
class Backbone:
    """A frozen PLM with its tokenizer. `name` is what the user passed (recorded in prompt artifacts)."""
    model: nn.Module
    tokenizer: object
    family: Family
    name: str
    source: dict | None = None  # where the weights came from when not a plain HF folder (GGUF: file, sha256)
    path: str | None = None     # what from_pretrained read: a folder or hub id (aliases resolved); None: tiny

    def record(self) -> dict:
        """What a prompt artifact records about this backbone: its name as `canonical_model` spells it, plus
        `backbone_path` (the folder or hub id behind an alias) and `backbone_source` (GGUF: file, sha256) when
        known. An artifact carrying this names its backbone wherever it is evaluated, exported or projected."""
        rec = {"backbone": canonical_model(self.name)}
        if self.path is not None:
            rec["backbone_path"] = self.path
        if self.source is not None:
            rec["backbone_source"] = self.source
        return rec

    @property
    def d_model(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype


def resolve_dtype(dtype: str | None) -> torch.dtype:
    """'auto' -> bf16 on CUDA, fp32 on CPU (bf16 matmul is ~150x slower there)."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use auto, fp32, bf16 or fp16")
    return _DTYPES[dtype]


def freeze(model: nn.Module) -> nn.Module:
    """requires_grad=False everywhere and eval mode (no dropout: runs are deterministic and resumable)."""
    for p in model.parameters():
        p.requires_grad_(False)
    _keep_4bit_layout(model)
    return model.eval()


def _release_freed_memory() -> None:
    """Quantizing while loading frees every full-precision weight right after use; glibc keeps most of that
    memory mapped (0.44B-parameter nf4 Llama on CPU: 1.7 GiB resident after loading, 0.8 GiB after the trim).
    Hand it back to the OS so the host has it for activations, data and other ranks."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _keep_4bit_layout(model: nn.Module) -> None:
    """bitsandbytes' Linear4bit repacks its weight in place into a CPU inference layout the first time it runs
    under no_grad on an AVX512-BF16 CPU. That layout has no backward pass (training after an evaluation then
    fails), breaks for widths under the 64-wide quantization block, and swaps the tensor DeepSpeed ZeRO-3
    partitions. A prompt-tuned backbone alternates evaluation and training, so keep the trainable layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    check_quantization("", quantization)  # raises for unknown values


def _model_path(name: str) -> tuple[str, dict | None]:
    """(what from_pretrained reads, source record): GGUF files and `smollm2` become a cached HF folder."""
    if name == DEFAULT_MODEL:
        return packaged_minilm_path(), None
    path, source = resolve_model(name)
    if source is not None or os.path.isdir(path) or not os.path.exists(path):
        return path, source
    raise UserError(f"--model '{name}' is a file, not a model folder: pass a HF model folder, a .gguf file or "
                    f"a hub name")


def load_backbone(name: str = DEFAULT_MODEL, family: str | Family | None = None, dtype: str | None = "auto",
                  attn_implementation: str = "sdpa", quantization: str | None = None) -> Backbone:
    """Load `name` frozen. Raises UserError for unknown names (offline hub misses included)."""
    torch_dtype = resolve_dtype(dtype)
    source, path = None, None
    if name.startswith("tiny:"):
        check_quantization(name, quantization)
        model, tok = build_tiny(name.split(":", 1)[1])
        model = model.to(torch_dtype)
    else:
        from transformers import AutoConfig, AutoTokenizer
        path, source = _model_path(name)
        try:
            config = AutoConfig.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load model '{name}' ({type(exc).__name__}): pass a local HF model folder, "
                            f"a .gguf file, a reachable hub name, '{DEFAULT_MODEL}', '{SMOLLM2}' or "
                            f"tiny:<arch>") from None
        fam = parse_family(family) or detect_family(config)
        if fam is not Family.ENCODER and detect_family(config) is Family.ENCODER:
            raise UserError(f"--family {fam.value} scores label words with an LM head, but '{name}' is an "
                            f"embedding-only encoder ({', '.join(getattr(config, 'architectures', None) or [])}"
                            f"): drop --family (similarity or linear head), or pass a checkpoint with an LM head")
        kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation)
        qconfig = _quantization_config(quantization, torch_dtype)
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
        try:
            model = auto_model_class(fam).from_pretrained(path, **kwargs)
        except ValueError:  # architecture without SDPA support
            kwargs["attn_implementation"] = "eager"
            model = auto_model_class(fam).from_pretrained(path, **kwargs)
    fam = parse_family(family) or detect_family(model.config, model)
    if quantization not in (None, "none"):
        _release_freed_memory()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "left" if fam is Family.CAUSAL else "right"
    return Backbone(model=freeze(model), tokenizer=tok, family=fam, name=name, source=source,
                    path=os.path.abspath(path) if path and os.path.isdir(path) else path)
