"""Importing the Triton kernels so they run: compiled on CUDA, else in the CPU interpreter."""
import importlib
import os
import sys

import torch

ON_CUDA = torch.cuda.is_available()


def import_kernels(name: str):
    """Import kernels.<name> so its Triton kernels run: compiled on CUDA, else in the CPU interpreter.

    The interpreter applies only to triton functions defined while TRITON_INTERPRET=1 (triton's own tl.*
    library included), so on a machine without CUDA, where compiled triton cannot run anyway, a triton
    imported earlier without it is imported again (its C extension stays) and the module reloaded.
    """
    if not ON_CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
        language = sys.modules.get("triton.language")
        if language is not None and type(language.max).__name__ != "InterpretedFunction":
            for loaded in [m for m in sys.modules if m.split(".")[0] == "triton" and not m.startswith("triton._C")]:
                del sys.modules[loaded]
    module = importlib.import_module(f"ds_prompt.kernels.{name}")
    if not ON_CUDA and not module._INTERPRETED:
        module = importlib.reload(module)
    return module
