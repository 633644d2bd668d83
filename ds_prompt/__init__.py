"""ds_prompt: soft prompt tuning of frozen language models on DeepSpeed."""

__version__ = "0.1.0"
