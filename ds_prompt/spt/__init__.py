"""SPT (Bari et al. 2022): soft prompts retrieved from a memory bank by discrete prompts.

Our documented reading, not the paper's verified method (see docs/spt.md): `bank` (MemoryBank, the prompt
module, multitask head, bank artifacts), `mixture` (task mixture and global batches), `inspect` (retrieval
heatmap), `export`, `trained` (a trained bank folder read back as a model), `cli` (`ds-prompt spt ...`). The
train and evaluate loops are the recipe ds_prompt.recipes.spt.
"""
from ds_prompt.spt.bank import (
    BankConfig,
    MemoryBank,
    MultiTaskHead,
    SPTModel,
    SPTPrompt,
    build_spt_model,
    init_spt_prompt,
    load_bank,
    save_bank,
)

__all__ = ["BankConfig", "MemoryBank", "MultiTaskHead", "SPTModel", "SPTPrompt", "build_spt_model",
           "init_spt_prompt", "load_bank", "save_bank"]
