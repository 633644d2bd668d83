"""kernels.topk_retrieval: Triton kernel vs torch reference (CPU interpreter without CUDA), tie rule, errors."""

import pytest
import torch

from tests.kernel_helpers import import_kernels

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"


topk = import_kernels("topk_retrieval")


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    """Dispatch to the Triton kernel in these tests only (the env is read at call time)."""
    monkeypatch.setenv(topk.FORCE_TRITON_ENV, "1")


def _random_bank(batch, n_keys, dim, dtype, integer_valued=False, seed=0):
    """queries [batch, dim], keys [n_keys, dim]; integer values in [-2, 2] make every score exact and tie a lot."""
    generator = torch.Generator().manual_seed(seed)
    if integer_valued:
        queries = torch.randint(-2, 3, (batch, dim), generator=generator).float()
        keys = torch.randint(-2, 3, (n_keys, dim), generator=generator).float()
    else:
        queries, keys = torch.randn(batch, dim, generator=generator), torch.randn(n_keys, dim, generator=generator)
    return queries.to(DEVICE, dtype), keys.to(DEVICE, dtype)


def _assert_valid_topk(scores, indices, queries, keys, k):
    """Scores match the reference; each index's true score equals its reported score (near-ties may swap)."""
    want_scores, _ = topk.topk_retrieval_reference(queries, keys, k)
    assert scores.shape == indices.shape == (queries.shape[0], k)
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-4)
    true_scores = (queries.float() @ keys.float().T).gather(1, indices)
    torch.testing.assert_close(true_scores, scores, rtol=1e-5, atol=1e-4)
    assert all(len(set(row)) == k for row in indices.tolist())


def _assert_lower_index_first(scores, indices):
    same_score = scores[:, 1:] == scores[:, :-1]
    assert (indices[:, 1:] > indices[:, :-1])[same_score].all()


HAND_KEYS = torch.tensor([[1.0, 0.0, 0.0],
                          [0.0, 1.0, 0.0],
                          [1.0, 1.0, 0.0],
                          [0.0, 0.0, 1.0]])
HAND_QUERIES = torch.tensor([[1.0, 0.0, 0.0],
                             [0.0, 0.0, 2.0],
                             [1.0, 1.0, 1.0]])


def test_reference_hand_example():
    scores, indices = topk.topk_retrieval_reference(HAND_QUERIES, HAND_KEYS, 3)
    assert scores.tolist() == [[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, 1.0]]
    assert indices.tolist() == [[0, 2, 1], [3, 0, 1], [2, 0, 1]]


def test_triton_hand_example():
    scores, indices = topk.topk_retrieval(HAND_QUERIES.to(DEVICE), HAND_KEYS.to(DEVICE), 3)
    assert scores.tolist() == [[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, 1.0]]
    assert indices.tolist() == [[0, 2, 1], [3, 0, 1], [2, 0, 1]]


@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(k, dtype):
    """N=1000 is not a multiple of the 256-key tile; d=80 not a multiple of the 128-wide d block."""
    queries, keys = _random_bank(5, 1000, 80, dtype)
    scores, indices = topk.topk_retrieval(queries, keys, k)
    _assert_valid_topk(scores, indices, queries, keys, k)


@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_break_to_lower_index(k, dtype):
    """Exact integer scores with many duplicates: indices equal the stable-sort reference exactly."""
    queries, keys = _random_bank(4, 1000, 4, dtype, integer_valued=True)
    keys[700:] = keys[:300]  # duplicate rows, the copies sit in the other key chunk
    scores, indices = topk.topk_retrieval(queries, keys, k)
    want_scores, want_indices = topk.topk_retrieval_reference(queries, keys, k)
    assert torch.equal(scores, want_scores) and torch.equal(indices, want_indices)
    _assert_lower_index_first(scores, indices)


def test_partial_blocks_and_many_chunks():
    """20 queries over blocks of 16, 1000 keys over tiles of 64 in 4 chunks, d=40 over blocks of 16."""
    queries, keys = _random_bank(20, 1000, 40, torch.float32, integer_valued=True, seed=1)
    launch = topk.TopkLaunch(block_b=16, block_n=64, block_d=16, num_chunks=5)
    scores, indices = topk._topk_retrieval_triton(queries, keys, 33, launch)
    want_scores, want_indices = topk.topk_retrieval_reference(queries, keys, 33)
    assert torch.equal(scores, want_scores) and torch.equal(indices, want_indices)


def test_k_equals_n_returns_every_key():
    queries, keys = _random_bank(2, 37, 16, torch.float32, integer_valued=True, seed=2)
    scores, indices = topk.topk_retrieval(queries, keys, 37)
    assert torch.equal(indices.sort(dim=1).values, torch.arange(37, device=DEVICE).expand(2, 37))
    _assert_lower_index_first(scores, indices)


def test_outputs_are_detached_and_gather_gives_key_gradients():
    queries, keys = _random_bank(3, 300, 16, torch.float32, seed=3)
    keys.requires_grad_(True)
    scores, indices = topk.topk_retrieval(queries, keys, 4)
    assert not scores.requires_grad
    retrieved = keys[indices]  # [B, k, d]
    (retrieved @ queries.unsqueeze(-1)).sum().backward()
    assert keys.grad.abs().sum(dim=1).count_nonzero() == indices.unique().numel()


def test_without_force_cpu_uses_reference(monkeypatch):
    monkeypatch.delenv(topk.FORCE_TRITON_ENV)

    def fail(*args, **kwargs):
        raise AssertionError("the Triton launcher ran for CPU tensors without DS_PROMPT_FORCE_TRITON")

    monkeypatch.setattr(topk, "_topk_retrieval_triton", fail)
    assert topk.topk_retrieval(HAND_QUERIES, HAND_KEYS, 2)[1].tolist() == [[0, 2], [3, 0], [2, 0]]


@pytest.mark.parametrize("queries,keys,k", [
    (torch.zeros(2, 3), torch.zeros(4, 3), 0),
    (torch.zeros(2, 3), torch.zeros(4, 3), 5),
    (torch.zeros(2, 3), torch.zeros(100, 3), 65),
    (torch.zeros(2, 3), torch.zeros(4, 5), 1),
    (torch.zeros(3), torch.zeros(4, 3), 1),
    (torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.bfloat16), 1),
])
def test_bad_arguments_raise(queries, keys, k):
    for retrieve in (topk.topk_retrieval, topk.topk_retrieval_reference):
        with pytest.raises(ValueError):
            retrieve(queries, keys, k)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch,k", [(1, 8), (32, 64)])
def test_gpu_large_bank_matches_reference(batch, k):
    queries, keys = _random_bank(batch, 262144, 768, torch.bfloat16, seed=4)
    scores, indices = topk.topk_retrieval(queries, keys, k)
    _assert_valid_topk(scores, indices, queries, keys, k)
    queries, keys = _random_bank(batch, 262144, 64, torch.bfloat16, integer_valued=True, seed=5)
    assert torch.equal(topk.topk_retrieval(queries, keys, k)[1], topk.topk_retrieval_reference(queries, keys, k)[1])
