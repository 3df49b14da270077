"""ancis_fast.ops.crop_and_resize and level_crop_bounds: identical to roi_align
(aligned=True, sampling_ratio=1) for float boxes, to the exact crop for integer boxes at their
own size, close to F.interpolate of the crop otherwise; native vs fallback identical."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ancis_fast import ops
from ancis_fast.backends.torchscript import script
from ancis_fast.ops.crop_and_resize import crop_and_resize_torch
from ancis_fast.pipeline import reference

needs_native = pytest.mark.skipif(not ops.native_available(),
                                  reason=f"native ops not built: {ops._native.reason()}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and ops._native.has_cuda()),
                                reason="needs a CUDA GPU and the CUDA build of ancis_fast._C")


def _features(batch=2, channels=5, height=33, width=47, seed=0):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _boxes(n, height, width, seed, margin=0.0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g) * torch.tensor([height, width]) - margin
    size = torch.rand(n, 2, generator=g) * torch.tensor([height, width]) / 2 + 0.25
    return torch.cat([lo, lo + size], dim=1)


def _roi_align(features, boxes, batch_idx, out_size):
    rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes[:, [1, 0, 3, 2]]], dim=1)
    return torchvision.ops.roi_align(features, rois, out_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)


@pytest.mark.parametrize("n,out_size,margin,seed", [(1, (7, 7), 0.0, 1), (40, (5, 9), 0.0, 2),
                                                    (60, (14, 14), 20.0, 3), (1000, (3, 4), 5.0, 4)])
def test_float_boxes_identical_to_roi_align(n, out_size, margin, seed):
    features = _features(seed=seed)
    boxes = _boxes(n, 33, 47, seed, margin)
    batch_idx = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
    expected = _roi_align(features, boxes, batch_idx, out_size)
    assert torch.equal(ops.crop_and_resize(features, boxes, batch_idx, out_size), expected)
    assert torch.equal(crop_and_resize_torch(features, boxes, batch_idx, out_size), expected)


def test_align_corners_samples_box_corners():
    features = torch.arange(6 * 8, dtype=torch.float32).reshape(1, 1, 6, 8)
    boxes = torch.tensor([[1.0, 2.0, 4.0, 6.0]])
    out = ops.crop_and_resize(features, boxes, torch.tensor([0]), (4, 5), align_corners=True)
    # Bilinear is exact on a linear ramp: value = 8*y + x on the grid y = 1..4, x = 2..6.
    expected = (8 * torch.arange(1.0, 5.0)[:, None] + torch.arange(2.0, 7.0)[None, :])
    assert torch.equal(out[0, 0], expected)
    boxes = _boxes(30, 33, 47, 5, margin=3.0)
    batch_idx = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(5))
    f = _features(seed=5)
    assert torch.equal(ops.crop_and_resize(f, boxes, batch_idx, (6, 11), True),
                       crop_and_resize_torch(f, boxes, batch_idx, (6, 11), True))


@pytest.mark.parametrize("align_corners", [False, True])
def test_integer_crops_match_interpolate_of_the_crop(align_corners):
    features = _features(seed=6)
    g = torch.Generator().manual_seed(6)
    crops = []
    for _ in range(25):
        y1, x1 = int(torch.randint(0, 30, (1,), generator=g)), int(torch.randint(0, 44, (1,), generator=g))
        y2 = y1 + int(torch.randint(0, 33 - y1, (1,), generator=g))
        x2 = x1 + int(torch.randint(0, 47 - x1, (1,), generator=g))
        crops.append([y1, x1, y2, x2])
    bounds = torch.tensor(crops)
    batch_idx = torch.randint(0, 2, (25,), generator=g)
    got = ops.crop_and_resize(features, bounds, batch_idx, (9, 13), align_corners)
    assert torch.equal(got, crop_and_resize_torch(features, bounds, batch_idx, (9, 13), align_corners))
    for k, (y1, x1, y2, x2) in enumerate(crops):
        crop = features[batch_idx[k]: batch_idx[k] + 1, :, y1:y2 + 1, x1:x2 + 1]
        expected = F.interpolate(crop, (9, 13), mode="bilinear", align_corners=align_corners)[0]
        torch.testing.assert_close(got[k], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_integer_crop_at_its_own_size_is_exact(align_corners):
    features = _features(seed=7)
    bounds = torch.tensor([[0, 0, 32, 46], [3, 4, 12, 20], [10, 10, 10, 30], [5, 5, 7, 5]], dtype=torch.int32)
    for k, (y1, x1, y2, x2) in enumerate(bounds.tolist()):
        out = ops.crop_and_resize(features, bounds[k:k + 1], torch.tensor([1]), (y2 - y1 + 1, x2 - x1 + 1),
                                  align_corners)
        assert torch.equal(out[0], features[1, :, y1:y2 + 1, x1:x2 + 1])


def test_integer_crops_outside_or_empty_give_zeros_or_clip():
    features = _features(seed=8)
    bounds = torch.tensor([[40, 0, 50, 10], [5, 9, 2, 20], [-3, -3, 4, 4]])
    out = ops.crop_and_resize(features, bounds, torch.tensor([0, 0, 1]), (4, 4))
    assert torch.all(out[:2] == 0)
    clipped = ops.crop_and_resize(features, torch.tensor([[0, 0, 4, 4]]), torch.tensor([1]), (4, 4))
    assert torch.equal(out[2], clipped[0])


def test_out_of_image_float_boxes_are_zero():
    features = _features(seed=9)
    boxes = torch.tensor([[-100.0, -100.0, -50.0, -50.0], [200.0, 10.0, 260.0, 20.0], [-0.9, -0.9, 2.0, 2.0]])
    batch_idx = torch.tensor([0, 1, 0])
    out = ops.crop_and_resize(features, boxes, batch_idx, (3, 3))
    assert torch.all(out[:2] == 0)
    assert torch.equal(out, _roi_align(features, boxes, batch_idx, (3, 3)))


def test_empty_and_degenerate():
    features = _features(seed=10)
    assert ops.crop_and_resize(features, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (4, 4)).shape == (0, 5, 4, 4)
    point = torch.tensor([[10.0, 10.0, 10.0, 10.0]])
    out = ops.crop_and_resize(features, point, torch.tensor([0]), (2, 2))
    assert torch.equal(out, _roi_align(features, point, torch.tensor([0]), (2, 2)))


def test_dtypes():
    features = _features(seed=11)
    boxes = _boxes(20, 33, 47, 11)
    batch_idx = torch.zeros(20, dtype=torch.long)
    out64 = ops.crop_and_resize(features.double(), boxes.double(), batch_idx, (5, 5))
    assert out64.dtype == torch.float64
    assert torch.equal(out64, _roi_align(features.double(), boxes.double(), batch_idx, (5, 5)))
    out16 = ops.crop_and_resize(features.half(), boxes, batch_idx, (5, 5))
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), _roi_align(features, boxes, batch_idx, (5, 5)), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("call,match", [
    (lambda f, b, i: ops.crop_and_resize(f[0], b, i, (4, 4)), "features must have shape"),
    (lambda f, b, i: ops.crop_and_resize(f, b[:, :3], i, (4, 4)), "boxes must have shape"),
    (lambda f, b, i: ops.crop_and_resize(f, b, i[:1], (4, 4)), "batch_idx must have shape"),
    (lambda f, b, i: ops.crop_and_resize(f, b, i.float(), (4, 4)), "batch_idx must be an integer"),
    (lambda f, b, i: ops.crop_and_resize(f, b, i + 5, (4, 4)), "batch_idx values"),
    (lambda f, b, i: ops.crop_and_resize(f, b, i, (0, 4)), "out_size must be positive"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(_features(), _boxes(3, 33, 47, 0), torch.zeros(3, dtype=torch.long))


def test_level_crop_bounds_match_reference():
    input_size = (64, 96)
    level_sizes = [(64, 96), (32, 48), (16, 24), (8, 12), (4, 6)]
    g = torch.Generator().manual_seed(12)
    boxes = _boxes(300, 64, 96, 12, margin=20.0)
    boxes[::13, 2:] = boxes[::13, :2] + torch.rand(len(boxes[::13]), 2, generator=g) * 3  # thin boxes
    boxes[5] = torch.tensor([10.5, 20.5, 30.5, 40.5])                                   # ties at .5
    bounds, num_levels = ops.level_crop_bounds(boxes, input_size, level_sizes)
    for k, box in enumerate(boxes):
        expected = reference.level_crop_bounds(box, input_size, level_sizes)
        assert int(num_levels[k]) == len(expected)
        assert [tuple(b) for b in bounds[k, :len(expected)].tolist()] == expected


def test_level_crops_feed_crop_and_resize_exactly():
    """The fast path's gather: level bounds + integer crop_and_resize at native size = the
    reference's crop."""
    features = _features(batch=1, channels=3, height=16, width=24, seed=13)
    boxes = torch.tensor([[8.0, 12.0, 40.0, 60.0]])
    bounds, num_levels = ops.level_crop_bounds(boxes, (64, 96), [(16, 24)])
    y1, x1, y2, x2 = bounds[0, 0].tolist()
    out = ops.crop_and_resize(features, bounds[:, 0], torch.tensor([0]), (y2 - y1 + 1, x2 - x1 + 1))
    assert int(num_levels[0]) == 1
    assert torch.equal(out[0], features[0, :, y1:y2 + 1, x1:x2 + 1])


@needs_native
def test_crop_and_resize_opcheck():
    features = _features(seed=14)
    boxes = _boxes(10, 33, 47, 14)
    batch_idx = torch.randint(0, 2, (10,), generator=torch.Generator().manual_seed(14))
    torch.library.opcheck(torch.ops.ancis.crop_and_resize.default, (features, boxes, batch_idx, [4, 6], False))
    bounds = boxes.round().long()
    torch.library.opcheck(torch.ops.ancis.crop_and_resize.default, (features, bounds, batch_idx, [4, 6], True))


@needs_native
@pytest.mark.parametrize("integer_boxes, align_corners", [(False, False), (False, True), (True, True)])
def test_channels_last_features_give_channels_last_crops_of_equal_values(integer_boxes, align_corners):
    """The CPU kernel reads the detector's channels-last maps without a conversion."""
    features = _features(channels=7, seed=16)
    boxes = _boxes(30, 33, 47, 16, margin=3.0)
    boxes = boxes.round().long() if integer_boxes else boxes
    batch_idx = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(16))
    expected = ops.crop_and_resize(features, boxes, batch_idx, (5, 6), align_corners=align_corners)
    got = ops.crop_and_resize(features.contiguous(memory_format=torch.channels_last), boxes, batch_idx, (5, 6),
                              align_corners=align_corners)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, expected)
    torch.library.opcheck(torch.ops.ancis.crop_and_resize.default,
                          (features.contiguous(memory_format=torch.channels_last), boxes, batch_idx, [5, 6],
                           align_corners))


@needs_native
def test_crop_and_resize_torchscript():
    scripted = script(_scripted_crop)
    features = _features(seed=15)
    boxes = _boxes(10, 33, 47, 15)
    batch_idx = torch.zeros(10, dtype=torch.long)
    assert torch.equal(scripted(features, boxes, batch_idx), _roi_align(features, boxes, batch_idx, (4, 4)))


def _scripted_crop(features: torch.Tensor, boxes: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
    return torch.ops.ancis.crop_and_resize(features, boxes, batch_idx, [4, 4], False)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_crop_and_resize_cuda_matches_cpu(dtype):
    features = _features(seed=16)
    boxes = _boxes(200, 33, 47, 16, margin=5.0)
    batch_idx = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(16))
    for b in (boxes, boxes.round().long()):
        cpu = ops.crop_and_resize(features, b, batch_idx, (7, 7))
        gpu = ops.crop_and_resize(features.cuda().to(dtype), b.cuda(), batch_idx.cuda(), (7, 7)).cpu().float()
        tol = 0 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(gpu, cpu, rtol=tol, atol=tol)
