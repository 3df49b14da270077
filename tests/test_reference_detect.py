"""The release's Detect step: threshold, 200 cap, greedy NMS (strict >), ties."""
import torch

from ancis_fast.boxes import box_iou, decode
from ancis_fast.pipeline.reference import detect, detections_of_image, nms_greedy


def _boxes(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_nms_suppresses_only_strictly_greater_iou():
    # IoU(a, b) = 50/150 = 1/3 exactly; c is disjoint.
    boxes = _boxes([[0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_greedy(boxes, scores, 1 / 3).tolist() == [0, 1, 2]  # equal to the threshold: kept
    assert nms_greedy(boxes, scores, 0.3).tolist() == [0, 2]  # above: suppressed


def test_nms_is_greedy_not_pairwise():
    # b overlaps a and c; a suppresses b, so c (which only overlaps b) survives.
    boxes = _boxes([[0, 0, 10, 10], [0, 6, 10, 16], [0, 12, 10, 22]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_greedy(boxes, scores, 0.2).tolist() == [0, 2]


def test_nms_ties_keep_lower_index_first():
    boxes = _boxes([[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms_greedy(boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_empty_input():
    assert nms_greedy(torch.zeros(0, 4), torch.zeros(0), 0.3).numel() == 0


def test_nms_cap_keeps_only_top_200_candidates():
    n = 250  # disjoint boxes: NMS would keep all of them without the cap
    boxes = torch.stack([torch.arange(n) * 20.0, torch.zeros(n), torch.arange(n) * 20.0 + 10, torch.full((n,), 10.0)], 1)
    scores = torch.linspace(0.31, 0.99, n)
    keep = nms_greedy(boxes, scores, 0.3)
    assert keep.numel() == 200
    assert set(keep.tolist()) == set(range(50, 250))
    assert nms_greedy(boxes, scores, 0.3, top_k=None).numel() == 250


def test_nms_against_brute_force_definition():
    torch.manual_seed(0)
    top_left = torch.rand(120, 2) * 100
    boxes = torch.cat([top_left, top_left + 5 + torch.rand(120, 2) * 30], 1)
    scores = torch.rand(120)
    keep = nms_greedy(boxes, scores, 0.3, top_k=None)
    iou = box_iou(boxes, boxes)
    alive, expected = torch.ones(120, dtype=torch.bool), []
    for i in sorted(range(120), key=lambda k: -scores[k].item()):
        if alive[i]:
            expected.append(i)
            alive &= ~(iou[i] > 0.3)
    assert keep.tolist() == expected


def _logits_for_scores(scores):
    """Two-class logits whose softmax foreground score is ``scores``."""
    fg = torch.logit(scores.clamp(1e-6, 1 - 1e-6))
    return torch.stack([torch.zeros_like(fg), fg], dim=-1)


def test_detect_threshold_is_strict_and_rows_are_sorted():
    priors = torch.tensor([[10.0, 10, 8, 8], [40, 40, 8, 8], [70, 70, 8, 8], [100, 100, 8, 8]])
    scores = torch.tensor([0.3, 0.6, 0.9, 0.2])
    out = detect(torch.zeros(1, 4, 4), _logits_for_scores(scores)[None], priors, conf_thresh=0.3, nms_thresh=0.3)
    assert out.shape == (1, 2, 500, 5)
    assert out[0, 0].abs().sum() == 0  # background class stays empty
    rows = out[0, 1]
    assert (rows[:, 0] > 0).sum() == 2  # 0.3 is not > 0.3
    torch.testing.assert_close(rows[:2, 0], torch.tensor([0.9, 0.6]))
    torch.testing.assert_close(rows[:2, 1:], torch.tensor([[66.0, 66, 74, 74], [36, 36, 44, 44]]))
    boxes, det_scores, labels = detections_of_image(out[0])
    assert boxes.shape == (2, 4) and labels.tolist() == [1, 1]
    torch.testing.assert_close(det_scores, torch.tensor([0.9, 0.6]))


def test_detect_batch_matches_per_image_nms():
    torch.manual_seed(1)
    priors = torch.cat([torch.rand(300, 2) * 200, 10 + torch.rand(300, 2) * 20], 1)
    locs, conf = torch.randn(2, 300, 4) * 0.1, torch.randn(2, 300, 2)
    out = detect(locs, conf, priors, 0.3, 0.3, top_k=50)
    for b in range(2):
        scores = torch.softmax(conf[b], -1)[:, 1]
        cand = torch.nonzero(scores > 0.3).flatten()
        keep = cand[nms_greedy(decode(locs[b], priors)[cand], scores[cand], 0.3)][:50]
        assert (out[b, 1, :, 0] > 0).sum() == keep.numel()
        torch.testing.assert_close(out[b, 1, : keep.numel(), 0], scores[keep])


def test_detect_with_no_candidates_is_all_zero():
    priors = torch.tensor([[10.0, 10, 8, 8]])
    out = detect(torch.zeros(1, 1, 4), _logits_for_scores(torch.tensor([0.1]))[None], priors)
    assert out.abs().sum() == 0
    boxes, scores, labels = detections_of_image(out[0])
    assert boxes.shape == (0, 4) and scores.numel() == 0
