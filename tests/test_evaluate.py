"""Evaluation metrics against hand-computed cases."""
import math

import numpy as np
import pytest

from ancis_fast.evaluate import (
    Evaluator, box_iou, dsb_scores, mask_iou, match_in_score_order, match_one_to_one, matching_stats, voc07_ap,
)


def _masks(shape, *regions):
    """Bool [N,H,W] masks, each region a (y-slice, x-slice)."""
    out = np.zeros((len(regions), *shape), bool)
    for k, (ys, xs) in enumerate(regions):
        out[k, ys, xs] = True
    return out


def test_voc07_ap_hand_case():
    # precision 1, .5, 2/3, .5 at recall .25, .25, .5, .5 -> levels 0-.2 give 1, .3-.5 give 2/3
    ap = voc07_ap(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool), num_gt=4)
    assert ap == pytest.approx(5 / 11)


def test_voc07_ap_recall_levels_are_exact_tenths():
    # recall reaches exactly 0.3: the 0.3 level counts (np.arange(0, 1.1, 0.1) would miss it)
    assert voc07_ap(np.array([0.9, 0.8, 0.7]), np.ones(3, bool), num_gt=10) == pytest.approx(4 / 11)


def test_voc07_ap_sorts_by_score_and_handles_empty():
    assert voc07_ap(np.array([0.2, 0.9]), np.array([False, True]), num_gt=1) == pytest.approx(1.0)
    assert voc07_ap(np.zeros(0), np.zeros(0, bool), num_gt=3) == 0.0
    assert math.isnan(voc07_ap(np.array([0.5]), np.array([False]), num_gt=0))


def test_score_order_matching_takes_best_unmatched_ground_truth():
    # classic VOC would mark the second detection FP (its best GT is taken); spec §8 lets it
    # take its best *unmatched* GT
    iou = np.array([[0.9, 0.0], [0.8, 0.55]])
    assert match_in_score_order(iou, 0.5).tolist() == [True, True]
    assert match_in_score_order(np.array([[0.9, 0.0], [0.8, 0.3]]), 0.5).tolist() == [True, False]


def test_iou_threshold_is_strict():
    gt = _masks((4, 4), (slice(0, 1), slice(0, 2)))  # 2 px
    pred = _masks((4, 4), (slice(0, 1), slice(0, 1)))  # 1 px inside: IoU exactly 0.5
    iou = mask_iou(pred, gt)
    assert iou[0, 0] == 0.5
    assert match_in_score_order(iou, 0.5).tolist() == [False]
    assert matching_stats(iou, 0.5).tp == 0
    assert matching_stats(iou, 0.49).tp == 1


def _dsb_case():
    shape = (6, 8)
    gt = _masks(shape, (slice(0, 2), slice(0, 2)), (slice(4, 5), slice(0, 5)))  # A: 4 px, B: 5 px
    pred = _masks(shape, (slice(0, 2), slice(0, 2)),  # = A, IoU 1
                  (slice(4, 5), slice(0, 3)),  # 3 px of B, IoU 0.6
                  (slice(0, 2), slice(6, 8)))  # nothing: FP
    return pred, gt


def test_mask_iou_hand_case_and_label_map_equivalence():
    pred, gt = _dsb_case()
    iou = mask_iou(pred, gt)
    np.testing.assert_allclose(iou, [[1.0, 0.0], [0.0, 0.6], [0.0, 0.0]])
    labels = np.zeros(gt.shape[1:], np.int32)
    labels[gt[0]], labels[gt[1]] = 1, 2
    np.testing.assert_allclose(mask_iou(pred, labels), iou)


def test_empty_prediction_mask_matches_nothing():
    gt = _masks((4, 4), (slice(0, 2), slice(0, 2)))
    pred = np.zeros((1, 4, 4), bool)
    assert mask_iou(pred, gt)[0, 0] == 0.0


def test_dsb_score_hand_case():
    pred, gt = _dsb_case()
    per_t = dsb_scores(mask_iou(pred, gt))
    # t = .50, .55: TP 2, FP 1, FN 0 -> 2/3; t >= .60 (strict): TP 1, FP 2, FN 1 -> 1/4
    np.testing.assert_allclose(per_t, [2 / 3] * 2 + [1 / 4] * 8)
    assert per_t.mean() == pytest.approx(1 / 3)


def test_matching_stats_and_panoptic_quality_hand_case():
    pred, gt = _dsb_case()
    s = matching_stats(mask_iou(pred, gt), 0.5)
    assert (s.tp, s.fp, s.fn) == (2, 1, 0)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(1.0)
    assert s.f1 == pytest.approx(0.8)
    assert s.sq == pytest.approx(0.8)
    assert s.pq == pytest.approx(1.6 / 2.5)
    assert s.pq == pytest.approx(s.sq * s.rq)


def test_one_to_one_matching_resolves_duplicates():
    # two overlapping predictions of one cell: only one can match
    iou = np.array([[0.7], [0.9]])
    p, g = match_one_to_one(iou, 0.5)
    assert p.tolist() == [1] and g.tolist() == [0]
    s = matching_stats(iou, 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)


def test_empty_image_counts_as_perfect_and_missing_everything_as_zero():
    assert dsb_scores(np.zeros((0, 0))).mean() == 1.0
    s = matching_stats(np.zeros((0, 3)), 0.5)
    assert (s.tp, s.fp, s.fn, s.precision, s.recall, s.f1, s.pq) == (0, 0, 3, 1.0, 0.0, 0.0, 0.0)


def test_evaluator_dataset_summary_over_two_images():
    pred, gt = _dsb_case()
    ev = Evaluator()
    ev.add_masks(pred, np.array([0.9, 0.5, 0.8]), gt, "a")  # TP(.9), FP(.8), TP(.5) at 0.5
    ev.add_masks(np.zeros((0, 6, 8), bool), np.zeros(0), gt, "b")  # misses both
    out = ev.summary()
    assert (out["images"], out["num_gt"], out["num_pred"]) == (2, 4, 3)
    assert (out["tp"], out["fp"], out["fn"]) == (2, 1, 2)
    # global order .9 TP, .8 FP, .5 TP over 4 GT: P=1,.5,2/3 at R=.25,.25,.5
    assert out["ap50"] == pytest.approx(5 / 11)
    # at 0.7 only the exact match is a TP: P=1 at R=.25
    assert out["ap70"] == pytest.approx(3 / 11)
    assert out["dsb_map"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert [r["name"] for r in ev.per_image()] == ["a", "b"]


def test_box_iou_and_add_boxes():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    np.testing.assert_allclose(box_iou(pred, gt), [[1.0], [0.5]])
    ev = Evaluator()
    ev.add_boxes(pred, np.array([0.5, 0.9]), gt)
    # the half box comes first (score .9) but IoU .5 is not > .5: FP; then TP
    assert ev.summary()["ap50"] == pytest.approx(0.5)  # precision .5 at every recall level


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred"):
        mask_iou(np.zeros(5), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="same size"):
        mask_iou(np.zeros((4, 4), np.int32), np.zeros((5, 4), np.int32))


def test_evaluate_command_scores_saved_label_images(tmp_path, capsys):
    import argparse
    import json

    from ancis_fast import evaluate
    from ancis_fast.data.layouts import write_label_layout
    from ancis_fast.data.synthetic import SynthConfig, generate
    from ancis_fast.io.writers import write_label_image

    sample = generate(1, SynthConfig(size=(64, 64), count=(5, 10)))
    write_label_layout(sample, tmp_path / "data")
    perfect = sample.labels.astype(np.uint16)
    write_label_image(tmp_path / "pred" / f"{sample.name}_labels.tif", perfect)
    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(tmp_path / "data"), "--pred", str(tmp_path / "pred"), "--quiet",
                              "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["ap50"] == 1.0 and summary["dsb_map"] == 1.0 and summary["fp"] == 0
    assert "AP@0.5=1.0000" in capsys.readouterr().out
    assert (tmp_path / "r.csv").read_text().startswith("name,")


def test_summary_by_group_scores_each_group_alone():
    pred, gt = _dsb_case()
    ev = Evaluator()
    ev.add_masks(pred, np.array([0.9, 0.5, 0.8]), gt, "a")  # DSB 1/3; TP 2, FP 1, FN 0 at 0.5
    ev.add_masks(gt, None, gt, "b")  # perfect
    ev.add_masks(np.zeros((0, 6, 8), bool), np.zeros(0), gt, "c")  # misses both
    groups = ev.summary_by_group(["tissue", "fluorescence", "tissue"], order=["fluorescence", "tissue"])
    assert list(groups) == ["fluorescence", "tissue", "all"]
    assert groups["fluorescence"]["dsb_map"] == 1.0 and groups["fluorescence"]["f1"] == 1.0
    assert groups["fluorescence"]["tp_ratio"] == 1.0 and groups["fluorescence"]["ap50"] == 1.0
    tissue = groups["tissue"]
    assert tissue["images"] == 2 and tissue["dsb_map"] == pytest.approx((1 / 3 + 0) / 2)
    assert (tissue["tp"], tissue["fp"], tissue["fn"]) == (2, 1, 2)
    assert tissue["f1"] == pytest.approx(4 / 7) and tissue["tp_ratio"] == pytest.approx(2 / 5)
    assert groups["all"] == ev.summary()
    assert groups["all"]["dsb_map"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="3 images"):
        ev.summary_by_group(["tissue"])


def test_evaluate_command_reports_the_validation_split_per_class(tmp_path, capsys):
    import argparse
    import json

    from ancis_fast import evaluate
    from ancis_fast.data.layouts import write_label_layout
    from ancis_fast.data.sample import Sample
    from ancis_fast.io.writers import write_label_image

    labels = np.zeros((48, 48), np.int32)
    labels[5:15, 5:15], labels[25:35, 20:30] = 1, 2
    for k in range(8):
        fluorescence = np.where(labels > 0, 200, 10 + k).astype(np.uint8)  # bright nuclei on black
        bright = Sample(255 - fluorescence, labels, f"b{k}")  # dark nuclei on light gray: bright-field
        for item in (Sample(fluorescence, labels, f"f{k}"), bright):
            write_label_layout(item, tmp_path / "data")
            found = item.labels if item.name.startswith("f") else np.zeros_like(item.labels)  # bright-field: all missed
            write_label_image(tmp_path / "pred" / f"{item.name}_labels.tif", found.astype(np.uint16))
    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(tmp_path / "data"), "--pred", str(tmp_path / "pred"), "--quiet",
                              "--split", "val", "--json", str(tmp_path / "r.json")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    by_class = report["by_class"]
    assert list(by_class) == ["fluorescence", "brightfield", "all"]
    assert by_class["fluorescence"]["images"] == 3 and by_class["brightfield"]["images"] == 3  # min 3 of 8 each
    assert by_class["fluorescence"]["dsb_map"] == 1.0 and by_class["brightfield"]["dsb_map"] == 0.0
    assert by_class["all"]["dsb_map"] == pytest.approx(0.5)
    assert {row["image_class"] for row in report["images"]} == {"fluorescence", "brightfield"}
    table = capsys.readouterr().out
    assert "| fluorescence | 3 |" in table and "| brightfield | 3 |" in table
