"""ds_prompt: soft prompt tuning of frozen language models on DeepSpeed."""

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

from ds_prompt.fpt.partial import evenly_select_layers  # noqa: E402,F401  (public API)
