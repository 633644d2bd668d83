"""Top-k inner-product retrieval: for each query, the k keys with the highest score q . k_n.

Used by SPT's memory bank: queries are pooled discrete-prompt representations, keys are the bank's keys.

    queries [B, d], keys [N, d] (same float dtype: fp32, bf16 or fp16; same device)
    -> scores  [B, k] float32, sorted descending
       indices [B, k] int64,   the key row of each score

Tie rule: equal scores are ordered by LOWER key index first, on every path (the reference uses a stable
sort). Inputs must be finite; 1 <= k <= min(N, 64).

Not differentiable: both outputs are detached. To train the keys, gather the retrieved rows
(`keys[indices]`, shape [B, k, d]) and recompute their scores with autograd on.

The Triton kernel fuses the score tile (q block x key block, fp32 accumulate) with a streaming top-k, so
the [B, N] score matrix is never materialized. Each (score, index) pair is packed into one int64 whose
order is (score descending, index ascending); this makes every candidate unique and the tie rule exact.
Program (query block, key chunk) keeps a running top-K of its chunk and writes it to a small candidate
buffer [B, chunks, K]; `torch.topk` over the candidates gives the answer.

Dispatch: the Triton kernel runs when the inputs are on CUDA, or when DS_PROMPT_FORCE_TRITON=1 (with
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

MAX_K = 64
_INT64_MIN = -(2**63)
_LOW32 = 2**32 - 1

# Kernels defined while TRITON_INTERPRET=1 run in the CPU interpreter, which gets bf16 arithmetic wrong.
_INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)


if triton is not None:
    _INT64_MIN_C = tl.constexpr(_INT64_MIN)
    _LOW32_C = tl.constexpr(_LOW32)

    @triton.jit
    def _pack_score_index(scores, offs_n):
        """[BB, BN] fp32 scores and [BN] key indices -> [BB, BN] int64, ordered by (score desc, index asc)."""
        scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 ties with +0.0, as in torch
        bits = scores.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # int order == float order
        low = _LOW32_C - offs_n.to(tl.int64)
        return (ordered.to(tl.int64) << 32) | low[None, :]

    @triton.jit
    def _merge_tile(run, tile, K: tl.constexpr):
        """Fold a tile of packed keys [BB, BN] into the running top-K [BB, K] (unsorted, unique keys)."""
        slots = tl.arange(0, K)
        tile_max = tl.max(tile, axis=1)
        kth = tl.min(run, axis=1)
        # Each round moves one tile key per row into the slot of the row's current K-th key; rows whose
        # best remaining key cannot enter stay put. Most tiles need no round once the top-K is warm.
        while tl.max((tile_max > kth).to(tl.int32), axis=0) > 0:
            enters = tile_max > kth
            slot = tl.argmin(run, axis=1)
            run = tl.where(enters[:, None] & (slots[None, :] == slot[:, None]), tile_max[:, None], run)
            tile = tl.where(enters[:, None] & (tile == tile_max[:, None]), _INT64_MIN_C, tile)
            tile_max = tl.max(tile, axis=1)
            kth = tl.min(run, axis=1)
        return run

    @triton.jit
    def _topk_retrieval_kernel(
        q_ptr, k_ptr, cand_ptr,
        B, N, D,
        stride_qb, stride_qd, stride_kn, stride_kd,
        tiles_per_chunk, num_chunks,
        K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """Program (query block, key chunk): packed top-K of its chunk -> cand[B, num_chunks, K] int64."""
        pid_b = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_ok = offs_b < B
        run = tl.full([BLOCK_B, K], _INT64_MIN_C, tl.int64)
        for tile_idx in range(tiles_per_chunk):
            offs_n = (pid_c * tiles_per_chunk + tile_idx) * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < N
            key_rows = offs_n.to(tl.int64)[:, None]  # N * d of a big bank overflows int32
            scores = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                d_ok = offs_d < D
                q = tl.load(q_ptr + offs_b[:, None] * stride_qb + offs_d[None, :] * stride_qd,
                            mask=b_ok[:, None] & d_ok[None, :], other=0.0)
                k = tl.load(k_ptr + key_rows * stride_kn + offs_d[None, :] * stride_kd,
                            mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                if UPCAST:
                    q = q.to(tl.float32)
                    k = k.to(tl.float32)
                scores = tl.dot(q, tl.trans(k), scores, input_precision="ieee")
            packed = _pack_score_index(scores, offs_n)
            packed = tl.where(b_ok[:, None] & n_ok[None, :], packed, _INT64_MIN_C)
            run = _merge_tile(run, packed, K)
        slots = tl.arange(0, K)
        tl.store(cand_ptr + (offs_b[:, None] * num_chunks + pid_c) * K + slots[None, :], run,
                 mask=b_ok[:, None])


@dataclass(frozen=True)
class TopkLaunch:
    """Block sizes and key split of one `_topk_retrieval_kernel` launch.

    block_b, block_n, block_d: tile sizes (powers of two, >= 16 for tl.dot); num_chunks: key ranges, one
    program column each.
    """

    block_b: int
    block_n: int
    block_d: int
    num_chunks: int
    num_warps: int = 4


def topk_launch_config(queries: torch.Tensor, keys: torch.Tensor) -> TopkLaunch:
    """Tiles for the device: on CUDA ~4 programs per SM; elsewhere (the interpreter, ~6 ms per program)
    big tiles and two key chunks."""
    (batch, dim), n_keys = queries.shape, keys.shape[0]
    block_b = min(max(triton.next_power_of_2(batch), 16), 64)
    if queries.is_cuda:
        block_n, block_d = 128, 64
        programs = 4 * torch.cuda.get_device_properties(queries.device).multi_processor_count
        chunks = max(1, programs // triton.cdiv(batch, block_b))
        return TopkLaunch(block_b, block_n, block_d, min(chunks, triton.cdiv(n_keys, block_n)))
    block_n = 256
    block_d = min(max(triton.next_power_of_2(dim), 16), 256)
    return TopkLaunch(block_b, block_n, block_d, min(2, triton.cdiv(n_keys, block_n)))


def _check_args(queries: torch.Tensor, keys: torch.Tensor, k: int) -> None:
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(f"queries must be [B, d] and keys [N, d]; got {tuple(queries.shape)} and "
                         f"{tuple(keys.shape)}: flatten leading dims first")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries have d={queries.shape[1]} but keys have d={keys.shape[1]}: project one side")
    if queries.dtype != keys.dtype or queries.device != keys.device:
        raise ValueError(f"queries are {queries.dtype} on {queries.device} but keys are {keys.dtype} on "
                         f"{keys.device}: cast/move one of them")
    if not queries.is_floating_point():
        raise ValueError(f"queries and keys must be floating point, got {queries.dtype}")
    if not 1 <= k <= min(keys.shape[0], MAX_K):
        raise ValueError(f"k={k} is out of range: need 1 <= k <= min(N={keys.shape[0]}, {MAX_K})")


def _unpack_candidates(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `_pack_score_index`: int64 [...] -> (scores float32, indices int64)."""
    ordered = (packed >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW32 - (packed & _LOW32)


def _topk_retrieval_triton(queries: torch.Tensor, keys: torch.Tensor, k: int,
                           launch: TopkLaunch) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch `_topk_retrieval_kernel`, then merge the [B, chunks, K] candidates with torch.topk."""
    if keys.shape[0] >= 2**31:
        raise ValueError(f"N={keys.shape[0]} keys exceeds the kernel's int32 key index: shard the bank")
    batch, dim = queries.shape
    n_keys = keys.shape[0]
    k_slots = max(triton.next_power_of_2(k), 2)
    tiles = triton.cdiv(n_keys, launch.block_n)
    tiles_per_chunk = triton.cdiv(tiles, launch.num_chunks)
    num_chunks = triton.cdiv(tiles, tiles_per_chunk)
    cand = torch.empty(batch, num_chunks, k_slots, dtype=torch.int64, device=queries.device)
    grid = (triton.cdiv(batch, launch.block_b), num_chunks)
    _topk_retrieval_kernel[grid](
        queries, keys, cand, batch, n_keys, dim,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1),
        tiles_per_chunk, num_chunks,
        K=k_slots, BLOCK_B=launch.block_b, BLOCK_N=launch.block_n, BLOCK_D=launch.block_d,
        UPCAST=_INTERPRETED, num_warps=launch.num_warps,
    )
    best = torch.topk(cand.view(batch, -1), k, dim=1, sorted=True).values
    return _unpack_candidates(best)


@torch.no_grad()
def topk_retrieval_reference(queries: torch.Tensor, keys: torch.Tensor,
                             k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch top-k: full [B, N] fp32 scores, stable descending sort (ties: lower index first).

    queries [B, d], keys [N, d] -> (scores [B, k] float32, indices [B, k] int64), detached.
    """
    _check_args(queries, keys, k)
    scores = queries.float() @ keys.float().T
    top_scores, top_indices = torch.sort(scores, dim=1, descending=True, stable=True)
    return top_scores[:, :k].contiguous(), top_indices[:, :k].contiguous()


def _use_triton(t: torch.Tensor) -> bool:
    return use_triton(t, triton, _INTERPRETED, __name__)


def topk_retrieval(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys per query by inner product; Triton on CUDA, torch reference elsewhere.

    queries [B, d], keys [N, d] (same float dtype and device), 1 <= k <= min(N, 64)
    -> (scores [B, k] float32 sorted descending, indices [B, k] int64); ties: lower index first. Detached.
    """
    _check_args(queries, keys, k)
    if queries.numel() > 0 and _use_triton(queries):
        return _topk_retrieval_triton(queries, keys, k, topk_launch_config(queries, keys))
    return topk_retrieval_reference(queries, keys, k)
