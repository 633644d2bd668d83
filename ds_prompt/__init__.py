"""ds_prompt: soft prompt tuning of frozen language models on DeepSpeed."""

__version__ = "0.1.0"

from ds_prompt.fpt.partial import evenly_select_layers  # noqa: E402
