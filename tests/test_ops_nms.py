"""ancis_fast.ops.nms / batched_nms: same keep as torchvision on (y1, x1, y2, x2) boxes,
native and fallback."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision

from ancis_fast import ops
from ancis_fast.backends.torchscript import script
from ancis_fast.boxes import yxyx_to_xyxy
from ancis_fast.ops.nms import batched_nms_torch, nms_torch

needs_native = pytest.mark.skipif(not ops.native_available(),
                                  reason=f"native ops not built: {ops._native.reason()}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and ops._native.has_cuda()),
                                reason="needs a CUDA GPU and the CUDA build of ancis_fast._C")


def _boxes(n: int, seed: int, extent: float = 500.0, min_size: float = 5.0, max_size: float = 60.0,
           quantise: bool = False):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * extent
    size = torch.rand(n, 2, generator=g) * (max_size - min_size) + min_size
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    scores = torch.rand(n, generator=g)
    if quantise:  # identical boxes and tied scores
        boxes, scores = torch.round(boxes / 8) * 8, torch.round(scores * 10) / 10
    return boxes, scores


@contextlib.contextmanager
def _one_thread():
    """The fallback's many mid-sized torch ops: one thread keeps the runtime predictable on a
    shared 2-core machine (OpenMP regions stall when the other core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torchvision_nms(boxes, scores, thr):
    return torchvision.ops.nms(yxyx_to_xyxy(boxes), scores, thr)


def _torchvision_batched(boxes, scores, idxs, thr):
    # The per-class path: the coordinate-offset trick torchvision uses below 4k boxes rounds
    # the offset boxes, so it is not exact per-class NMS.
    return torchvision.ops.boxes._batched_nms_vanilla(yxyx_to_xyxy(boxes), scores, idxs, thr)


def _assert_stable_descending(keep, scores):
    s = scores[keep]
    assert torch.all(s[:-1] >= s[1:])
    ties = s[:-1] == s[1:]
    assert torch.all(keep[:-1][ties] < keep[1:][ties])


@pytest.mark.parametrize("n,seed,thr,quantise", [
    (0, 0, 0.5, False), (1, 1, 0.5, False), (2, 2, 0.5, False), (50, 3, 0.5, False), (1000, 4, 0.3, False),
    (1000, 5, 0.7, True), (3000, 6, 0.5, True), (500, 7, 0.0, False), (500, 8, 1.0, True),
])
def test_nms_same_keep_as_torchvision(n, seed, thr, quantise):
    boxes, scores = _boxes(n, seed, quantise=quantise)
    expected = _torchvision_nms(boxes, scores, thr)
    got = ops.nms(boxes, scores, thr)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)
    with _one_thread():
        assert torch.equal(nms_torch(boxes, scores, thr), expected)


def test_nms_ten_thousand_boxes():
    boxes, scores = _boxes(10_000, 9, extent=1000.0)
    expected = _torchvision_nms(boxes, scores, 0.5)
    assert torch.equal(ops.nms(boxes, scores, 0.5), expected)
    with _one_thread():
        assert torch.equal(nms_torch(boxes, scores, 0.5), expected)


def test_nms_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # kept (best)
                          [0.0, 1.0, 10.0, 11.0],     # IoU 90/110 = 0.818 -> dropped
                          [0.0, 5.0, 10.0, 15.0],     # IoU 50/150 = 0.333 -> kept at 0.5
                          [20.0, 20.0, 30.0, 30.0]])  # disjoint -> kept
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert ops.nms(boxes, scores, 0.3).tolist() == [0, 3]
    # Exactly at the threshold the box survives: IoU must be strictly greater.
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0]])
    iou = torch.tensor(50.0) / torch.tensor(150.0)  # the float IoU of the pair
    assert ops.nms(pair, torch.tensor([0.9, 0.8]), iou.item()).tolist() == [0, 1]
    assert ops.nms(pair, torch.tensor([0.9, 0.8]), iou.item() - 1e-9).tolist() == [0]


def test_nms_ties_keep_lower_index_first():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [1]
    disjoint = torch.tensor([[0.0, 20.0 * i, 10.0, 20.0 * i + 10.0] for i in range(4)])
    keep = ops.nms(disjoint, scores, 0.5)
    assert keep.tolist() == [1, 2, 0, 3]
    assert torch.equal(keep, _torchvision_nms(disjoint, scores, 0.5))


def test_nms_degenerate_and_out_of_image_boxes():
    boxes, scores = _boxes(400, 10, extent=100.0)
    boxes[::5, 2] = boxes[::5, 0]                        # zero height
    boxes[1::7, 3] = boxes[1::7, 1] - 3.0                # inverted
    boxes[2::9] = boxes[2::9] - 1000.0                   # far outside any image
    boxes[3::11, :2] = boxes[3::11, 2:]                  # points
    expected = _torchvision_nms(boxes, scores, 0.4)
    assert torch.equal(ops.nms(boxes, scores, 0.4), expected)
    assert torch.equal(nms_torch(boxes, scores, 0.4), expected)


def test_nms_non_finite_boxes_and_scores():
    boxes, scores = _boxes(500, 18, extent=100.0)
    boxes[::9, 0] = float("nan")
    boxes[::13, 3] = float("inf")
    boxes[::17, 1] = -float("inf")
    scores[::19] = float("nan")
    expected = _torchvision_nms(boxes, scores, 0.5)
    assert torch.equal(ops.nms(boxes, scores, 0.5), expected)
    assert torch.equal(nms_torch(boxes, scores, 0.5), expected)


def test_nms_float64():
    boxes, scores = _boxes(800, 11)
    boxes, scores = boxes.double(), scores.double()
    assert torch.equal(ops.nms(boxes, scores, 0.5), _torchvision_nms(boxes, scores, 0.5))


@pytest.mark.parametrize("n,classes,seed,quantise", [(0, 3, 0, False), (1, 1, 1, False), (600, 3, 2, False),
                                                     (2000, 7, 3, True), (10_000, 5, 4, False)])
def test_batched_nms_same_keep_as_torchvision(n, classes, seed, quantise):
    boxes, scores = _boxes(n, seed, quantise=quantise)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
    expected = _torchvision_batched(boxes, scores, idxs, 0.5)
    got = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert sorted(got.tolist()) == sorted(expected.tolist())
    _assert_stable_descending(got, scores)
    with _one_thread():
        assert torch.equal(batched_nms_torch(boxes, scores, idxs, 0.5), got)


def test_batched_nms_matches_torchvision_public_api_on_integer_boxes():
    # Integer coordinates make torchvision's coordinate-offset path exact as well.
    boxes, scores = _boxes(1500, 12, quantise=True)
    idxs = torch.randint(0, 4, (1500,), generator=torch.Generator().manual_seed(12))
    expected = torchvision.ops.batched_nms(yxyx_to_xyxy(boxes), scores, idxs, 0.5)
    assert sorted(ops.batched_nms(boxes, scores, idxs, 0.5).tolist()) == sorted(expected.tolist())


def test_batched_nms_classes_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert ops.batched_nms(boxes, scores, torch.tensor([-5, 10**12, 3]), 0.5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("call,match", [
    (lambda: ops.nms(torch.zeros(3, 5), torch.zeros(3), 0.5), "boxes must have shape"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(4), 0.5), "scores must have shape"),
    (lambda: ops.nms(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3), 0.5), "boxes must be a floating"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5), "idxs must be an integer"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.5),
     "idxs must have shape"),
])
def test_nms_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@needs_native
def test_nms_opcheck():
    boxes, scores = _boxes(300, 13)
    idxs = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(13))
    torch.library.opcheck(torch.ops.ancis.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.ancis.batched_nms.default, (boxes, scores, idxs, 0.5))


@needs_native
def test_nms_torchscript():
    scripted = script(_scripted_nms)
    boxes, scores = _boxes(300, 14)
    assert torch.equal(scripted(boxes, scores), _torchvision_nms(boxes, scores, 0.5))


def _scripted_nms(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torch.ops.ancis.nms(boxes, scores, 0.5)


@needs_native
def test_nms_export_with_data_dependent_length():
    class Keep(torch.nn.Module):
        def forward(self, boxes, scores):
            keep = torch.ops.ancis.nms(boxes, scores, 0.5)
            return boxes[keep]

    boxes, scores = _boxes(200, 15)
    exported = torch.export.export(Keep(), (boxes, scores))
    assert torch.equal(exported.module()(boxes, scores), boxes[_torchvision_nms(boxes, scores, 0.5)])


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("n", [0, 1, 1000, 10_000])
def test_nms_cuda_same_keep_as_torchvision(n):
    boxes, scores = _boxes(n, 16, extent=1000.0)
    expected = _torchvision_nms(boxes, scores, 0.5)
    assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), expected)
    idxs = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(n))
    got = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu()
    assert torch.equal(got, ops.batched_nms(boxes, scores, idxs, 0.5))


@needs_cuda
@pytest.mark.cuda
def test_nms_cuda_float16():
    boxes, scores = _boxes(2000, 17)
    got = ops.nms(boxes.cuda().half(), scores.cuda().half(), 0.5).cpu()
    assert torch.equal(got, ops.nms(boxes.half().float(), scores.half(), 0.5))
