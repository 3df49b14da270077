"""ancis_fast.ops.decode: native vs fallback vs ancis_fast.boxes.decode (bit-identical)."""
from __future__ import annotations

import pytest
import torch

from ancis_fast import boxes as box_utils
from ancis_fast import ops
from ancis_fast.models import make_priors
from ancis_fast.ops.decode import decode_torch

needs_native = pytest.mark.skipif(not ops.native_available(),
                                  reason=f"native ops not built: {ops._native.reason()}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and ops._native.has_cuda()),
                                reason="needs a CUDA GPU and the CUDA build of ancis_fast._C")


def _inputs(batch: int, seed: int = 0, size: int = 128):
    g = torch.Generator().manual_seed(seed)
    priors = make_priors(size, size)
    locs = torch.randn(batch, priors.shape[0], 4, generator=g) * 1.5
    return locs, priors


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_matches_boxes_decode(batch):
    locs, priors = _inputs(batch, seed=batch)
    expected = box_utils.decode(locs, priors)
    assert torch.equal(ops.decode(locs, priors), expected)
    assert torch.equal(decode_torch(locs, priors), expected)


def test_decode_hand_computed():
    priors = torch.tensor([[10.0, 20.0, 4.0, 8.0]])
    locs = torch.zeros(1, 1, 4)
    assert ops.decode(locs, priors).tolist() == [[[8.0, 16.0, 12.0, 24.0]]]
    # dy = 1 moves the centre by 0.1 * h; dh = 5 scales h by exp(1).
    out = ops.decode(torch.tensor([[[1.0, 0.0, 5.0, 0.0]]]), priors)[0, 0]
    h = 4.0 * torch.exp(torch.tensor(1.0))
    assert torch.allclose(out, torch.tensor([10.4 - h / 2, 16.0, 10.4 + h / 2, 24.0]))


def test_decode_full_size_priors_and_extreme_offsets():
    priors = make_priors(512, 512)
    locs = torch.randn(1, priors.shape[0], 4, generator=torch.Generator().manual_seed(5)) * 40  # exp overflow
    locs[0, :10] = float("nan")
    expected = box_utils.decode(locs, priors)
    got = ops.decode(locs, priors)
    assert torch.equal(torch.nan_to_num(got, nan=-7.0), torch.nan_to_num(expected, nan=-7.0))


def test_decode_float64_and_unbatched():
    locs, priors = _inputs(2, seed=3)
    assert torch.equal(ops.decode(locs.double(), priors.double()), box_utils.decode(locs.double(), priors.double()))
    assert torch.equal(ops.decode(locs[0], priors), box_utils.decode(locs[0], priors))


def test_decode_half_locs_float_priors_promote():
    locs, priors = _inputs(1, seed=4)
    got = ops.decode(locs.half(), priors)
    assert got.dtype == torch.float32
    assert torch.equal(got, box_utils.decode(locs.half(), priors))


def test_decode_empty():
    priors = torch.zeros(0, 4)
    assert ops.decode(torch.zeros(2, 0, 4), priors).shape == (2, 0, 4)
    assert ops.decode(torch.zeros(0, 5, 4), torch.zeros(5, 4)).shape == (0, 5, 4)


@pytest.mark.parametrize("locs,priors,match", [
    (torch.zeros(2, 5, 3), torch.zeros(5, 4), "locs must have shape"),
    (torch.zeros(2, 5, 4), torch.zeros(6, 4), "priors must have shape"),
    (torch.zeros(2, 5, 4, dtype=torch.long), torch.zeros(5, 4), "locs must be a floating"),
])
def test_decode_bad_inputs(locs, priors, match):
    with pytest.raises(ValueError, match=match):
        ops.decode(locs, priors)


@needs_native
def test_decode_native_errors_are_value_errors():
    with pytest.raises(ValueError, match="priors must have shape"):
        torch.ops.ancis.decode(torch.zeros(2, 5, 4), torch.zeros(6, 4))


@needs_native
def test_decode_opcheck():
    locs, priors = _inputs(2)
    torch.library.opcheck(torch.ops.ancis.decode.default, (locs, priors, [0.1, 0.2]))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_cuda_matches_torch_on_cuda(dtype):
    locs, priors = _inputs(2)
    locs, priors = locs.cuda().to(dtype), priors.cuda()
    assert torch.equal(ops.decode(locs, priors), box_utils.decode(locs, priors))
