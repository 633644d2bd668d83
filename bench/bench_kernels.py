"""Time the Triton kernels against their torch references on a CUDA GPU.

    python -m bench.bench_kernels [--kernel activation_stats|topk_retrieval|all] [--repeats 20] [--warmup 5]

For each shape: median time (ms, torch.cuda.Event, L2 flushed before every run) of the dispatch function
(Triton on CUDA) and of the torch reference, and achieved bandwidth in GB/s = (bytes read + bytes written)
/ time, also as a fraction of the device's copy bandwidth (one 1 GiB device-to-device copy, read + write).

Shapes: activation_stats x [tokens, neurons] bf16, no token mask, in {(4096, 4096), (16384, 11008),
(65536, 16384)}; topk_retrieval bf16 queries [B, d] and keys [N, d] with N in {65536, 262144, 1048576},
d in {768, 4096}, B in {1, 32}, k in {8, 64}.
Without CUDA it prints that a GPU is needed and exits 0.
"""
import argparse
import statistics

import torch

from ds_prompt.kernels.activation_stats import activation_stats, activation_stats_reference
from ds_prompt.kernels.topk_retrieval import topk_retrieval, topk_retrieval_reference

STATS_SHAPES = [(4096, 4096), (16384, 11008), (65536, 16384)]
TOPK_N = [65536, 262144, 1048576]
TOPK_D = [768, 4096]
TOPK_B = [1, 32]
TOPK_K = [8, 64]
DTYPE = torch.bfloat16
L2_FLUSH_BYTES = 256 * 2**20


def time_ms(fn, warmup: int, repeats: int) -> float:
    """Median wall time of fn() on the current stream in ms, L2 flushed before each timed run."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(warmup: int, repeats: int) -> float:
    """Device-to-device copy of 1 GiB: (read + write bytes) / median time, GB/s."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / time_ms(lambda: dst.copy_(src), warmup, repeats) / 1e6


def report(name: str, nbytes: int, triton_ms: float, torch_ms: float, copy_gbs: float) -> None:
    """One line: both paths' ms and GB/s (fraction of copy bandwidth) and the speedup."""
    def path(ms):
        gbs = nbytes / ms / 1e6
        return f"{ms:9.3f} ms {gbs:7.0f} GB/s ({gbs / copy_gbs:4.0%})"

    print(f"{name:<44} triton {path(triton_ms)} | torch {path(torch_ms)} | x{torch_ms / triton_ms:.1f}")


def bench_activation_stats(copy_gbs: float, warmup: int, repeats: int) -> None:
    """activation_stats vs reference; bytes = x read + counts (int64) and abs_mean (fp32) written."""
    for tokens, neurons in STATS_SHAPES:
        x = torch.randn(tokens, neurons, device="cuda", dtype=DTYPE)
        nbytes = x.numel() * x.element_size() + neurons * (8 + 4)
        report(f"activation_stats {tokens}x{neurons} bf16", nbytes,
               time_ms(lambda: activation_stats(x), warmup, repeats),
               time_ms(lambda: activation_stats_reference(x), warmup, repeats), copy_gbs)


def bench_topk_retrieval(copy_gbs: float, warmup: int, repeats: int) -> None:
    """topk_retrieval vs reference; bytes = keys + queries read, scores (fp32) and indices (int64) written."""
    for n_keys in TOPK_N:
        for dim in TOPK_D:
            keys = torch.randn(n_keys, dim, device="cuda", dtype=DTYPE)
            for batch in TOPK_B:
                queries = torch.randn(batch, dim, device="cuda", dtype=DTYPE)
                for k in TOPK_K:
                    nbytes = (keys.numel() + queries.numel()) * keys.element_size() + batch * k * (4 + 8)
                    report(f"topk_retrieval N={n_keys} d={dim} B={batch} k={k} bf16", nbytes,
                           time_ms(lambda: topk_retrieval(queries, keys, k), warmup, repeats),
                           time_ms(lambda: topk_retrieval_reference(queries, keys, k), warmup, repeats),
                           copy_gbs)


BENCHES = {"activation_stats": bench_activation_stats, "topk_retrieval": bench_topk_retrieval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=[*BENCHES, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels needs a CUDA GPU (torch.cuda.is_available() is False); nothing timed.")
        return
    copy_gbs = copy_bandwidth_gbs(args.warmup, args.repeats)
    print(f"{torch.cuda.get_device_name()}: device copy bandwidth {copy_gbs:.0f} GB/s (read + write)")
    for bench in BENCHES.values() if args.kernel == "all" else [BENCHES[args.kernel]]:
        bench(copy_gbs, args.warmup, args.repeats)


if __name__ == "__main__":
    main()
