"""kernels.activation_stats: Triton kernel vs torch reference (CPU interpreter without CUDA), hand examples."""

import pytest
import torch

from tests.kernel_helpers import import_kernels

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"


stats = import_kernels("activation_stats")


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    """Dispatch to the Triton kernel in these tests only (the env is read at call time)."""
    monkeypatch.setenv(stats.FORCE_TRITON_ENV, "1")


def _random_activations(tokens, neurons, dtype, masked, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, neurons, generator=generator).to(dtype)
    token_mask = torch.rand(tokens, generator=generator) > 0.3 if masked else None
    return x.to(DEVICE), None if token_mask is None else token_mask.to(DEVICE)


def _assert_same_stats(got, want, rtol=1e-5):
    count, abs_mean = got[:2]
    want_count, want_abs_mean = want[:2]
    assert count.dtype == torch.int64 and abs_mean.dtype == torch.float32
    assert torch.equal(count, want_count)
    torch.testing.assert_close(abs_mean, want_abs_mean, rtol=rtol, atol=1e-6)
    if len(want) == 3:
        assert got[2].dtype == torch.bool and torch.equal(got[2], want[2])


HAND_X = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                       [-1.0, 2.0, 0.5, -3.0],
                       [2.0, 0.0, -1.0, 1.0]])
HAND_TOKEN_MASK = torch.tensor([True, True, False])


def test_reference_hand_example():
    count, abs_mean, mask = stats.activation_stats_reference(HAND_X, return_mask=True)
    assert count.tolist() == [2, 1, 1, 2]
    torch.testing.assert_close(abs_mean, torch.tensor([4 / 3, 4 / 3, 0.5, 7 / 3]))
    assert mask.tolist() == [[True, False, False, True], [False, True, True, False], [True, False, False, True]]
    count, abs_mean = stats.activation_stats_reference(HAND_X, HAND_TOKEN_MASK)
    assert count.tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(abs_mean, torch.tensor([1.0, 2.0, 0.25, 3.0]))
    packed = stats.activation_mask_reference(HAND_X, HAND_TOKEN_MASK, packed=True)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0b1001], [0b0110], [0]]


def test_triton_hand_example():
    x, token_mask = HAND_X.to(DEVICE), HAND_TOKEN_MASK.to(DEVICE)
    _assert_same_stats(stats.activation_stats(x, token_mask, return_mask=True),
                       stats.activation_stats_reference(x, token_mask, return_mask=True))


def test_pack_bit_order_is_little_endian():
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, 0] = mask[0, 9] = mask[1, 7] = mask[1, 10] = True
    packed = stats.pack_mask(mask)
    assert packed.tolist() == [[1, 2], [128, 4]]
    assert torch.equal(stats.unpack_mask(packed, 11), mask)


@pytest.mark.parametrize("tokens,neurons,dtype,masked", [
    (37, 1000, torch.float32, True),
    (37, 1000, torch.bfloat16, False),
    (37, 1000, torch.bfloat16, True),
    (130, 77, torch.float16, True),
])
def test_triton_matches_reference(tokens, neurons, dtype, masked):
    x, token_mask = _random_activations(tokens, neurons, dtype, masked)
    _assert_same_stats(stats.activation_stats(x, token_mask, return_mask=True),
                       stats.activation_stats_reference(x, token_mask, return_mask=True))
    _assert_same_stats(stats.activation_stats(x, token_mask), stats.activation_stats_reference(x, token_mask))
    assert torch.equal(stats.activation_mask(x, token_mask, packed=True),
                       stats.activation_mask_reference(x, token_mask, packed=True))
    assert torch.equal(stats.activation_mask(x, token_mask), stats.activation_mask_reference(x, token_mask))


@pytest.mark.parametrize("pack", [False, True])
def test_partial_blocks_and_token_splits(pack):
    """1000 neurons over blocks of 128 (last one partial), 37 tokens over 3 splits of 16."""
    x, token_mask = _random_activations(37, 1000, torch.bfloat16, masked=True, seed=1)
    launch = stats.StatsLaunch(block_t=16, block_n=128, token_splits=3)
    count, abs_mean, mask = stats._activation_stats_triton(x, token_mask, launch, write_mask=True, pack=pack)
    want = stats.activation_stats_reference(x, token_mask, return_mask=True)
    _assert_same_stats((count, abs_mean), want[:2])
    assert torch.equal(mask, stats.pack_mask(want[2]) if pack else want[2])


def test_all_negative_columns_and_strided_input():
    x, _ = _random_activations(50, 300, torch.float32, masked=False, seed=2)
    x[:, ::7] = -x[:, ::7].abs() - 0.1
    x_strided = x.T.contiguous().T  # same values, column-major strides
    count, abs_mean = stats.activation_stats(x_strided)
    assert (count[::7] == 0).all() and (abs_mean[::7] > 0.1).all()
    _assert_same_stats((count, abs_mean), stats.activation_stats_reference(x))


def test_all_tokens_dropped_gives_zeros():
    x, _ = _random_activations(20, 40, torch.float32, masked=False)
    token_mask = torch.zeros(20, dtype=torch.bool, device=DEVICE)
    count, abs_mean, mask = stats.activation_stats(x, token_mask, return_mask=True)
    assert not count.any() and not abs_mean.any() and not mask.any()
    _assert_same_stats((count, abs_mean), stats.activation_stats_reference(x, token_mask))


def test_without_force_cpu_uses_reference(monkeypatch):
    monkeypatch.delenv(stats.FORCE_TRITON_ENV)

    def fail(*args, **kwargs):
        raise AssertionError("the Triton launcher ran for CPU tensors without DS_PROMPT_FORCE_TRITON")

    monkeypatch.setattr(stats, "_activation_stats_triton", fail)
    count, abs_mean = stats.activation_stats(HAND_X)
    assert count.tolist() == [2, 1, 1, 2]


@pytest.mark.parametrize("x,token_mask", [
    (torch.zeros(2, 3, 4), None),
    (torch.zeros(4, 3, dtype=torch.int32), None),
    (torch.zeros(4, 3), torch.ones(3, dtype=torch.bool)),
    (torch.zeros(4, 3), torch.ones(4)),
])
def test_bad_arguments_raise(x, token_mask):
    with pytest.raises(ValueError):
        stats.activation_stats(x, token_mask)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_gpu_large_bf16_matches_reference():
    x, token_mask = _random_activations(16384, 11008, torch.bfloat16, masked=True, seed=3)
    # fp32 sums over ~16k tokens in a different order: relative error up to ~1e-4
    _assert_same_stats(stats.activation_stats(x, token_mask, return_mask=True),
                       stats.activation_stats_reference(x, token_mask, return_mask=True), rtol=1e-4)
    assert torch.equal(stats.activation_mask(x, token_mask, packed=True),
                       stats.activation_mask_reference(x, token_mask, packed=True))
