"""ds_prompt: soft prompt tuning of frozen language models on DeepSpeed.

The public API is lazy, so `import ds_prompt` stays light (no DeepSpeed, no recipes) until a name is used:

    from ds_prompt import TrainConfig, train, evaluate, load_prompt
    metrics = train(TrainConfig(model="tiny:bert", max_steps=20, output_dir="runs/x"))
    print(evaluate(prompt="runs/x")["accuracy"])
    tensor, meta, head = load_prompt("runs/x")
"""

import importlib as _importlib
import logging as _logging

__version__ = "0.1.0"


class _HubKernelNotice(_logging.Filter):
    """Drops bitsandbytes' import-time notice about the optional hub package `kernels`: on CPUs with AVX-512
    BF16 its CPU backend tries `kernels.get_kernel` for a faster 4-bit inference GEMM and warns when that package
    is absent, which it is (ds_prompt keeps 4-bit weights in their trainable layout and never uses that
    kernel). Every other bitsandbytes message passes."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HubKernelNotice())


# public name -> (module, attribute)
_PUBLIC = {
    "TrainConfig": ("ds_prompt.config", "TrainConfig"),
    "build_config": ("ds_prompt.config", "build_config"),
    "train": ("ds_prompt.recipes.prompt_tuning", "train"),
    "evaluate": ("ds_prompt.recipes.inference", "evaluate_prompt"),
    "load_prompt": ("ds_prompt.artifacts", "load_prompt"),
    "evenly_select_layers": ("ds_prompt.fpt.partial", "evenly_select_layers"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ds_prompt' has no attribute '{name}'")
    module, attr = _PUBLIC[name]
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
