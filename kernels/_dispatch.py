"""Shared dispatch rule of the kernels: Triton for CUDA tensors (or when forced), the torch reference elsewhere.

`DS_PROMPT_FORCE_TRITON=1` forces the Triton path on CPU tensors; that needs `TRITON_INTERPRET=1` set before the
kernel module is imported (the tests do both).
"""
from __future__ import annotations

import os

import torch

FORCE_TRITON_ENV = "DS_PROMPT_FORCE_TRITON"


def use_triton(t: torch.Tensor, triton_module, interpreted: bool, module_name: str) -> bool:
    forced = os.environ.get(FORCE_TRITON_ENV) == "1"
    if not (t.is_cuda or forced):
        return False
    if triton_module is None:
        if forced:
            raise RuntimeError(f"{FORCE_TRITON_ENV}=1 but triton is not importable: pip install triton")
        return False
    if not t.is_cuda and not interpreted:
        raise RuntimeError(f"{FORCE_TRITON_ENV}=1 with {t.device} tensors needs TRITON_INTERPRET=1 set "
                           f"before {module_name} is imported")
    return True
