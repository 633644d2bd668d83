"""Per-neuron activation statistics of an FFN intermediate, in one pass over the activations.

Used by the ON indicator (overlap of activated FFN neurons, binarized m = 1[a > 0]) and by FPT's FFN
reduction (neurons ranked by mean |activation|).

    x          [tokens, neurons], float (fp32, bf16, fp16; any strides)
    token_mask [tokens] bool or None; False rows (padding) are ignored everywhere
    -> positive_count [neurons] int64:   kept tokens with x > 0
       abs_mean       [neurons] float32: sum of |x| over kept tokens / number of kept tokens
                                         (0 when no token is kept)
       mask           [tokens, neurons] bool (optional): x > 0 on kept tokens, all False on dropped rows

Packed mask layout: uint8 [tokens, ceil(neurons / 8)], little-endian bit order: bit j (value 1 << j) of
byte b holds neuron 8 * b + j; bits past the last neuron are 0. `unpack_mask` inverts it.

The Triton kernel tiles (token block, neuron block), accumulates counts in int32 and |x| sums in fp32
per neuron, loops over a range of tokens, and writes one partial per (token split, neuron); a torch sum
over the splits combines them, so counts are exact and results deterministic. Values are cast to fp32
right after loading. The mask, bool or bit-packed, comes out of the same pass.

Dispatch: the Triton kernel runs when x is on CUDA, or when DS_PROMPT_FORCE_TRITON=1 (with
TRITON_INTERPRET=1 set before this module is imported, for CPU tensors); otherwise the torch reference.
"""
from dataclasses import dataclass

import torch

from ._dispatch import FORCE_TRITON_ENV, use_triton  # noqa: F401  (FORCE_TRITON_ENV re-exported)

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch reference works without triton
    triton = None


# Kernels defined while TRITON_INTERPRET=1 run in the CPU interpreter.
_INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)


if triton is not None:

    @triton.jit
    def _activation_stats_kernel(
        x_ptr, token_mask_ptr, count_ptr, abs_sum_ptr, mask_ptr,
        tokens, neurons, stride_xt, stride_xn, stride_mask_t, tokens_per_split,
        HAS_TOKEN_MASK: tl.constexpr, WRITE_MASK: tl.constexpr, PACK_MASK: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Program (neuron block, token split) -> count[split, neurons] int32, abs_sum[split, neurons] fp32."""
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < neurons
        count = tl.zeros([BLOCK_N], dtype=tl.int32)
        abs_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for t0 in range(pid_s * tokens_per_split, (pid_s + 1) * tokens_per_split, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            rows = offs_t.to(tl.int64)[:, None]  # row offsets of big activations overflow int32
            keep = offs_t < tokens
            if HAS_TOKEN_MASK:
                keep = keep & (tl.load(token_mask_ptr + offs_t, mask=keep, other=0) != 0)
            # Dropped tokens are never read: they load as 0, which is neither positive nor adds to |x|.
            x = tl.load(x_ptr + rows * stride_xt + offs_n[None, :] * stride_xn,
                        mask=keep[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            positive = x > 0
            count += tl.sum(positive.to(tl.int32), axis=0)
            abs_sum += tl.sum(tl.abs(x), axis=0)
            if WRITE_MASK:
                row_ok = (offs_t < tokens)[:, None]
                if PACK_MASK:
                    bits = tl.reshape(positive.to(tl.int32), [BLOCK_T, BLOCK_N // 8, 8])
                    weights = 1 << tl.arange(0, 8)
                    packed = tl.sum(bits * weights[None, None, :], axis=2).to(tl.uint8)
                    offs_byte = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
                    tl.store(mask_ptr + rows * stride_mask_t + offs_byte[None, :], packed,
                             mask=row_ok & (offs_byte < tl.cdiv(neurons, 8))[None, :])
                else:
                    tl.store(mask_ptr + rows * stride_mask_t + offs_n[None, :],
                             positive.to(tl.uint8), mask=row_ok & n_ok[None, :])
        tl.store(count_ptr + pid_s * neurons + offs_n, count, mask=n_ok)
        tl.store(abs_sum_ptr + pid_s * neurons + offs_n, abs_sum, mask=n_ok)


@dataclass(frozen=True)
class StatsLaunch:
    """Tiling of one `_activation_stats_kernel` launch.

    block_t, block_n: tile [tokens, neurons] (powers of two; block_n a multiple of 8 for the packed mask);
    token_splits: programs along tokens, each summing a contiguous token range.
    """

    block_t: int
    block_n: int
    token_splits: int
    num_warps: int = 4


def stats_launch_config(x: torch.Tensor) -> StatsLaunch:
    """Tiles for the device: on CUDA ~4 programs per SM; elsewhere (the interpreter, ~6 ms per program)
    one wide neuron block and two token splits."""
    tokens, neurons = x.shape
    if x.is_cuda:
        block_t, block_n = 32, 256
        programs = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
        splits = max(1, programs // triton.cdiv(neurons, block_n))
        return StatsLaunch(block_t, block_n, min(splits, triton.cdiv(tokens, block_t)))
    block_n = min(max(triton.next_power_of_2(neurons), 8), 2048)
    return StatsLaunch(64, block_n, min(2, triton.cdiv(tokens, 64)))


def _check_args(x: torch.Tensor, token_mask: torch.Tensor | None) -> None:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float [tokens, neurons] tensor, got {x.dtype} {tuple(x.shape)}: "
                         f"flatten [batch, seq, d_ff] with x.reshape(-1, d_ff)")
    if token_mask is not None and (token_mask.shape != x.shape[:1] or token_mask.dtype != torch.bool):
        raise ValueError(f"token_mask must be bool [{x.shape[0]}], got {token_mask.dtype} "
                         f"{tuple(token_mask.shape)}: pass attention_mask.reshape(-1).bool()")
    if token_mask is not None and token_mask.device != x.device:
        raise ValueError(f"token_mask is on {token_mask.device} but x is on {x.device}: move it")


def _kept_tokens(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor | int:
    """Divisor of the |x| sums: kept tokens, at least 1 (no kept token gives 0 / 1); no host sync."""
    return max(x.shape[0], 1) if token_mask is None else token_mask.sum().clamp_min(1)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [tokens, neurons] -> uint8 [tokens, ceil(neurons / 8)], bit j of byte b = neuron 8 * b + j."""
    tokens, neurons = mask.shape
    padded = torch.zeros(tokens, -(-neurons // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :neurons] = mask
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded.view(tokens, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, neurons: int) -> torch.Tensor:
    """uint8 [tokens, ceil(neurons / 8)] (little-endian bits, see module doc) -> bool [tokens, neurons]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != -(-neurons // 8):
        raise ValueError(f"packed must be uint8 [tokens, {-(-neurons // 8)}] for neurons={neurons}, got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.view(packed.shape[0], -1)[:, :neurons].bool()


def _activation_stats_triton(x: torch.Tensor, token_mask: torch.Tensor | None, launch: StatsLaunch,
                             write_mask: bool, pack: bool):
    """Launch `_activation_stats_kernel`; returns (count, abs_mean, mask or None)."""
    tokens, neurons = x.shape
    tokens_per_split = triton.cdiv(triton.cdiv(tokens, launch.token_splits), launch.block_t) * launch.block_t
    splits = triton.cdiv(tokens, tokens_per_split)
    count = torch.empty(splits, neurons, dtype=torch.int32, device=x.device)
    abs_sum = torch.empty(splits, neurons, dtype=torch.float32, device=x.device)
    mask = None
    if write_mask and pack:
        mask = torch.empty(tokens, -(-neurons // 8), dtype=torch.uint8, device=x.device)
    elif write_mask:
        mask = torch.empty(tokens, neurons, dtype=torch.bool, device=x.device)
    mask_arg = abs_sum if mask is None else mask.view(torch.uint8)
    token_mask_arg = abs_sum if token_mask is None else token_mask.contiguous().view(torch.uint8)
    grid = (triton.cdiv(neurons, launch.block_n), splits)
    _activation_stats_kernel[grid](
        x, token_mask_arg, count, abs_sum, mask_arg,
        tokens, neurons, x.stride(0), x.stride(1), mask_arg.stride(0), tokens_per_split,
        HAS_TOKEN_MASK=token_mask is not None, WRITE_MASK=write_mask, PACK_MASK=pack,
        BLOCK_T=launch.block_t, BLOCK_N=launch.block_n, num_warps=launch.num_warps,
    )
    abs_mean = abs_sum.sum(dim=0) / _kept_tokens(x, token_mask)
    return count.sum(dim=0, dtype=torch.int64), abs_mean, mask


def activation_stats_reference(x: torch.Tensor, token_mask: torch.Tensor | None = None,
                               return_mask: bool = False):
    """Plain-torch `activation_stats`: same arguments, same outputs (see module doc)."""
    _check_args(x, token_mask)
    values = x.float()
    if token_mask is not None:
        values = torch.where(token_mask.unsqueeze(1), values, 0.0)  # dropped rows: not positive, no |x|
    positive = values > 0
    abs_mean = values.abs().sum(dim=0) / _kept_tokens(x, token_mask)
    stats = (positive.sum(dim=0), abs_mean)
    return stats + (positive,) if return_mask else stats


def activation_mask_reference(x: torch.Tensor, token_mask: torch.Tensor | None = None,
                              packed: bool = False) -> torch.Tensor:
    """Plain-torch `activation_mask`: same arguments, same output."""
    mask = activation_stats_reference(x, token_mask, return_mask=True)[2]
    return pack_mask(mask) if packed else mask


def _use_triton(t: torch.Tensor) -> bool:
    return use_triton(t, triton, _INTERPRETED, __name__)


def activation_stats(x: torch.Tensor, token_mask: torch.Tensor | None = None, return_mask: bool = False):
    """Per-neuron (positive_count [neurons] int64, abs_mean [neurons] float32) of x [tokens, neurons].

    token_mask [tokens] bool drops padding rows. With return_mask=True a third output, the bool mask
    [tokens, neurons] of x > 0 on kept tokens, comes from the same pass. Triton on CUDA, torch elsewhere.
    """
    _check_args(x, token_mask)
    if x.numel() == 0 or not _use_triton(x):
        return activation_stats_reference(x, token_mask, return_mask)
    count, abs_mean, mask = _activation_stats_triton(x, token_mask, stats_launch_config(x),
                                                     write_mask=return_mask, pack=False)
    return (count, abs_mean, mask) if return_mask else (count, abs_mean)


def activation_mask(x: torch.Tensor, token_mask: torch.Tensor | None = None, packed: bool = False) -> torch.Tensor:
    """Binarized activations m = x > 0 of x [tokens, neurons]; rows dropped by token_mask are all False.

    Returns bool [tokens, neurons], or with packed=True uint8 [tokens, ceil(neurons / 8)] in the
    little-endian bit layout of the module doc (`unpack_mask` inverts it).
    """
    _check_args(x, token_mask)
    if x.numel() == 0 or not _use_triton(x):
        return activation_mask_reference(x, token_mask, packed)
    return _activation_stats_triton(x, token_mask, stats_launch_config(x), write_mask=True, pack=packed)[2]
