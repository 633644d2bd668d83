"""Model families and how to reach their parts.

A *family* decides where the class is read and which head scores it:
- ``mlm``: encoder with a masked-LM head (BERT, RoBERTa, ELECTRA generator); read at the mask slot.
- ``encoder``: embedding-only encoder without an LM head (e.g. all-MiniLM-L6-v2); similarity or linear head.
- ``causal``: decoder-only LM (GPT-2, Llama, Qwen, Mistral); read at the last position, left padding.
- ``seq2seq``: encoder-decoder (T5); read at the first decoder step.
"""
from __future__ import annotations

from enum import Enum

from ds_prompt.errors import UserError


class Family(str, Enum):
    MLM = "mlm"
    ENCODER = "encoder"
    CAUSAL = "causal"
    SEQ2SEQ = "seq2seq"


_CAUSAL_TYPES = {"gpt2", "llama", "qwen2", "qwen3", "mistral", "gpt_neox", "opt", "phi", "phi3", "gemma", "gemma2",
                 "falcon", "bloom", "gptj", "mixtral", "olmo", "smollm3"}
_SEQ2SEQ_TYPES = {"t5", "mt5", "umt5", "bart", "mbart"}


def detect_family(config, model=None) -> Family:
    """Family of a Hugging Face config (or built `model`), from its architecture names, then `model_type`."""
    archs = list(getattr(config, "architectures", None) or [])
    if model is not None:
        archs.append(type(model).__name__)
    for arch in archs:
        if arch.endswith("ForMaskedLM"):
            return Family.MLM
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return Family.CAUSAL
        if arch.endswith("ForConditionalGeneration") and getattr(config, "is_encoder_decoder", False):
            return Family.SEQ2SEQ
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False) or model_type in _SEQ2SEQ_TYPES:
        return Family.SEQ2SEQ
    if model_type in _CAUSAL_TYPES:
        return Family.CAUSAL
    return Family.ENCODER


def parse_family(name: str | Family | None) -> Family | None:
    """`--family` flag value -> Family (None keeps auto-detection)."""
    if name is None or isinstance(name, Family):
        return name
    try:
        return Family(str(name).lower())
    except ValueError:
        raise UserError(f"unknown --family '{name}': use one of {', '.join(f.value for f in Family)}") from None


def auto_model_class(family: Family):
    """The transformers Auto class that loads a checkpoint of `family` with the head ds_prompt scores."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM
    return {Family.MLM: AutoModelForMaskedLM, Family.ENCODER: AutoModel, Family.CAUSAL: AutoModelForCausalLM,
            Family.SEQ2SEQ: AutoModelForSeq2SeqLM}[family]
