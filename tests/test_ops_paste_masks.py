"""ancis_fast.ops.paste_masks: reference.paste_mask per box (spec §6), masks and label image,
native vs fallback."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ancis_fast import ops
from ancis_fast.backends.torchscript import script
from ancis_fast.ops.paste_masks import paste_labels_torch, paste_masks_torch
from ancis_fast.pipeline import reference

needs_native = pytest.mark.skipif(not ops.native_available(),
                                  reason=f"native ops not built: {ops._native.reason()}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and ops._native.has_cuda()),
                                reason="needs a CUDA GPU and the CUDA build of ancis_fast._C")


def _boxes(n, height, width, seed, margin=0.0, max_frac=0.4):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g) * torch.tensor([height, width], dtype=torch.float32) - margin
    size = torch.rand(n, 2, generator=g) * torch.tensor([height, width]) * max_frac + 1.0
    return torch.cat([lo, lo + size], dim=1)


def _reference_masks(probs, boxes, input_size, output_size, thr=0.5, sizes=None):
    out = []
    for k in range(probs.shape[0]):
        p = probs[k] if sizes is None else probs[k, :sizes[k][0], :sizes[k][1]]
        out.append(reference.paste_mask(p.numpy(), boxes[k], input_size, output_size, thr))
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, *output_size, dtype=torch.bool)


def _native_crop_sizes(boxes, input_size):
    """(h, w) of each box's paste bounds: the patch size of the reference pipeline."""
    sizes = []
    for box in boxes:
        b = reference.paste_bounds(box, input_size)
        sizes.append((b[2] - b[0] + 1, b[3] - b[1] + 1) if b else (0, 0))
    return sizes


@pytest.mark.parametrize("output_size", [(96, 128), (200, 300), (50, 61), (96, 200)])
def test_native_size_patches_identical_to_reference(output_size):
    """The reference pipeline's case: each patch already has its box's size."""
    input_size = (96, 128)
    boxes = _boxes(30, *input_size, seed=1, margin=10.0)
    sizes = _native_crop_sizes(boxes, input_size)
    g = torch.Generator().manual_seed(1)
    probs = torch.zeros(30, max(s[0] for s in sizes), max(s[1] for s in sizes))
    for k, (h, w) in enumerate(sizes):
        probs[k, :h, :w] = torch.rand(h, w, generator=g)
    mask_sizes = torch.tensor(sizes)
    expected = _reference_masks(probs, boxes, input_size, output_size, sizes=sizes)
    got = ops.paste_masks(probs, boxes, input_size, output_size, mask_sizes=mask_sizes)
    assert got.dtype == torch.bool and got.shape == (30, *output_size)
    assert torch.equal(got, expected)
    assert torch.equal(paste_masks_torch(probs, boxes, mask_sizes, input_size, output_size), expected)


@pytest.mark.parametrize("patch", [(28, 28), (7, 40), (1, 1), (3, 2)])
def test_resized_patches_match_cv2_up_to_threshold_ties(patch):
    """Resized patches follow OpenCV's generic INTER_LINEAR; the cv2 wheel's IPP path may
    round the last bit differently, so a pixel may differ only where cv2's value is within
    1e-5 of the threshold."""
    input_size, output_size = (80, 120), (123, 77)
    boxes = _boxes(25, *input_size, seed=2, margin=5.0)
    probs = torch.rand(25, *patch, generator=torch.Generator().manual_seed(2))
    expected = _reference_masks(probs, boxes, input_size, output_size)
    got = ops.paste_masks(probs, boxes, input_size, output_size)
    assert torch.equal(got, paste_masks_torch(probs, boxes, None, input_size, output_size))
    diff = got != expected
    if diff.any():
        for k in torch.nonzero(diff.flatten(1).any(1)).flatten().tolist():
            y1, x1, y2, x2 = reference.paste_bounds(boxes[k], input_size)
            resized = cv2.resize(probs[k].numpy(), (x2 - x1 + 1, y2 - y1 + 1), interpolation=cv2.INTER_LINEAR)
            canvas = np.full(input_size, 9.0, dtype=np.float32)
            canvas[y1:y2 + 1, x1:x2 + 1] = resized
            values = cv2.resize(canvas, output_size[::-1], interpolation=cv2.INTER_NEAREST)
            assert np.all(np.abs(values[diff[k].numpy()] - 0.5) < 1e-5)
    assert diff.sum() <= 2


def test_hand_computed_mask():
    probs = torch.tensor([[[0.9, 0.1], [0.6, 0.5]]])
    boxes = torch.tensor([[1.4, 2.5, 2.6, 3.5]])  # rounds (half to even) to rows 1..3, cols 2..4
    got = ops.paste_masks(probs, boxes, (5, 6))[0]
    assert torch.equal(got.nonzero()[:, 0].unique(), torch.tensor([1, 2, 3]))
    assert got[:, :2].sum() == 0 and got[:, 5].sum() == 0 and got[0].sum() == 0 and got[4].sum() == 0
    assert torch.equal(got, torch.from_numpy(reference.paste_mask(probs[0].numpy(), boxes[0], (5, 6), (5, 6))))


def test_label_image_highest_score_on_top():
    probs = torch.ones(3, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 8.0, 8.0], [4.0, 4.0, 6.0, 6.0]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    labels = ops.paste_masks(probs, boxes, (10, 10), label_image=True, scores=scores)
    assert labels.dtype == torch.int32 and labels.shape == (10, 10)
    assert labels[0, 0] == 1 and labels[4, 4] == 2 and labels[8, 8] == 2 and labels[9, 9] == 0
    assert labels[2, 5] == 1  # only box 0
    # Without scores the given order decides: box 0 first, on top.
    assert ops.paste_masks(probs, boxes, (10, 10), label_image=True)[4, 4] == 1
    assert torch.equal(labels, paste_labels_torch(probs, boxes, None, scores, (10, 10), (10, 10)))


def test_label_image_agrees_with_masks():
    input_size, output_size = (64, 64), (100, 90)
    boxes = _boxes(40, *input_size, seed=3, margin=4.0)
    probs = torch.rand(40, 16, 16, generator=torch.Generator().manual_seed(3))
    scores = torch.rand(40, generator=torch.Generator().manual_seed(4))
    scores[5] = scores[6]  # a tie: the lower index wins
    masks = ops.paste_masks(probs, boxes, input_size, output_size)
    labels = ops.paste_masks(probs, boxes, input_size, output_size, label_image=True, scores=scores)
    expected = torch.zeros(output_size, dtype=torch.int32)
    for k in torch.sort(scores, descending=True, stable=True).indices.flip(0).tolist():
        expected[masks[k]] = k + 1
    assert torch.equal(labels, expected)
    assert torch.equal(paste_labels_torch(probs, boxes, None, scores, input_size, output_size), expected)


def test_out_of_image_empty_and_missing_masks():
    probs = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(5))
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [100.0, 5.0, 120.0, 9.0], [2.0, 2.0, 9.0, 9.0],
                          [1.0, 1.0, 30.0, 30.0]])
    mask_sizes = torch.tensor([[6, 6], [6, 6], [0, 0], [6, 6]])
    got = ops.paste_masks(probs, boxes, (20, 20), (40, 40), mask_sizes=mask_sizes)
    assert got[:3].sum() == 0  # outside the canvas, and a box without a mask
    expected = reference.paste_mask(probs[3].numpy(), boxes[3], (20, 20), (40, 40))
    assert torch.equal(got[3], torch.from_numpy(expected))
    assert ops.paste_masks(torch.zeros(0, 5, 5), torch.zeros(0, 4), (20, 20)).shape == (0, 20, 20)
    assert torch.equal(ops.paste_masks(torch.zeros(0, 5, 5), torch.zeros(0, 4), (20, 20), label_image=True),
                       torch.zeros(20, 20, dtype=torch.int32))


def test_thresholds_and_single_box():
    probs = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor([[3.0, 4.0, 12.0, 13.0]])
    for thr in (0.0, 0.25, float(probs[0, 3, 3]), 1.0, 1.5):
        expected = reference.paste_mask(probs[0].numpy(), boxes[0], (32, 32), (32, 32), thr)
        assert torch.equal(ops.paste_masks(probs, boxes, (32, 32), threshold=thr)[0], torch.from_numpy(expected))


@pytest.mark.parametrize("kwargs,match", [
    (dict(probs=torch.zeros(2, 5)), "probs must have shape"),
    (dict(boxes=torch.zeros(3, 4)), "disagree on K"),
    (dict(mask_sizes=torch.tensor([[5, 9], [1, 1]])), "exceeds the probs patch size"),
    (dict(mask_sizes=torch.zeros(2, 2)), "mask_sizes must be an integer"),
    (dict(input_size=(0, 5)), "input_size must be positive"),
    (dict(scores=torch.zeros(3)), "scores must have shape"),
])
def test_bad_inputs(kwargs, match):
    args = dict(probs=torch.zeros(2, 5, 5), boxes=torch.zeros(2, 4), input_size=(10, 10))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.paste_masks(args.pop("probs"), args.pop("boxes"), args.pop("input_size"), **args)


@needs_native
def test_paste_opcheck():
    probs = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(7))
    boxes = _boxes(5, 30, 30, seed=7)
    sizes = torch.full((5, 2), 8)
    torch.library.opcheck(torch.ops.ancis.paste_masks.default, (probs, boxes, sizes, [30, 30], [45, 20], 0.5))
    torch.library.opcheck(torch.ops.ancis.paste_labels.default,
                          (probs, boxes, None, torch.rand(5), [30, 30], [45, 20], 0.5))


@needs_native
def test_paste_torchscript():
    scripted = script(_scripted_paste)
    probs = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(8))
    boxes = _boxes(5, 30, 30, seed=8)
    assert torch.equal(scripted(probs, boxes), _reference_masks(probs, boxes, (30, 30), (30, 30)))


def _scripted_paste(probs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return torch.ops.ancis.paste_masks(probs, boxes, None, [30, 30], [30, 30], 0.5)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paste_cuda_matches_cpu(dtype):
    input_size, output_size = (64, 64), (100, 90)
    boxes = _boxes(40, *input_size, seed=9, margin=4.0)
    probs = torch.rand(40, 16, 16, generator=torch.Generator().manual_seed(9)).to(dtype)
    scores = torch.rand(40, generator=torch.Generator().manual_seed(10))
    cpu = ops.paste_masks(probs.float(), boxes, input_size, output_size)
    gpu = ops.paste_masks(probs.cuda(), boxes.cuda(), input_size, output_size).cpu()
    assert torch.equal(gpu, cpu)
    cpu_l = ops.paste_masks(probs.float(), boxes, input_size, output_size, label_image=True, scores=scores)
    gpu_l = ops.paste_masks(probs.cuda(), boxes.cuda(), input_size, output_size, label_image=True,
                            scores=scores.cuda()).cpu()
    assert torch.equal(gpu_l, cpu_l)


def _from_windows(windows, origins, output_size):
    """Dense ``[K, H0, W0]`` masks of ``paste_windows``' windows (nothing may leave the image)."""
    dense = torch.zeros((windows.shape[0], *output_size), dtype=torch.bool)
    for k, ((y, x), window) in enumerate(zip(origins.tolist(), windows)):
        h, w = min(window.shape[0], output_size[0] - y), min(window.shape[1], output_size[1] - x)
        assert not window[h:].any() and not window[:, w:].any(), k
        dense[k, y : y + h, x : x + w] = window[:h, :w]
    return dense


@pytest.mark.parametrize("output_size", [(64, 80), (130, 97), (33, 41), (200, 200)])
def test_paste_windows_equal_dense_paste(output_size):
    """Windows placed at their origins are exactly ``paste_masks``' masks: boxes partly or
    wholly outside, NaN boxes, patches of every valid size (0: no mask), up- and downscaling."""
    g = torch.Generator().manual_seed(sum(output_size))
    k, input_size = 24, (64, 80)
    probs = torch.rand(k, 12, 14, generator=g)
    boxes = _boxes(k, *input_size, seed=sum(output_size), margin=6.0, max_frac=0.5)
    boxes[0] = float("nan")
    boxes[1, 2] = boxes[1, 0] - 3  # inverted
    sizes = torch.stack([torch.randint(0, 13, (k,), generator=g), torch.randint(0, 15, (k,), generator=g)], 1)
    sizes[2] = torch.tensor([12, 14])
    expected = paste_masks_torch(probs, boxes, sizes, input_size, output_size, 0.5)
    windows, origins = ops.paste_windows(probs, boxes, input_size, output_size, 0.5, mask_sizes=sizes)
    assert expected.any() and torch.equal(_from_windows(windows, origins, output_size), expected)
    extents = ops.paste_extents(boxes, input_size, output_size)  # mask or not
    assert windows.shape[1:] == tuple(extents[(sizes > 0).all(dim=1)].max(dim=0).values.tolist())
    larger, larger_origins = ops.paste_windows(probs, boxes, input_size, output_size, 0.5, mask_sizes=sizes,
                                               window=(windows.shape[1] + 5, windows.shape[2] + 3))
    assert torch.equal(_from_windows(larger, larger_origins, output_size), expected)


def test_paste_windows_native_size_patches_equal_reference():
    input_size, output_size = (96, 128), (200, 300)
    boxes = _boxes(10, *input_size, seed=5)
    sizes = _native_crop_sizes(boxes, input_size)
    g = torch.Generator().manual_seed(5)
    probs = torch.rand(10, max(h for h, _ in sizes), max(w for _, w in sizes), generator=g)
    mask_sizes = torch.tensor(sizes)
    windows, origins = ops.paste_windows(probs, boxes, input_size, output_size, 0.5, mask_sizes=mask_sizes)
    expected = _reference_masks(probs, boxes, input_size, output_size, sizes=sizes)
    assert torch.equal(_from_windows(windows, origins, output_size), expected)
