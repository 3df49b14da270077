"""Instance-segmentation metrics: mask (or box) AP with the VOC-2007 11-point rule
(spec §8), the 2018 Data Science Bowl mAP, and matching statistics.

Rules, all with **strict** ``IoU > threshold``:

- **AP** (spec §8): detections of all images sorted by descending score (stable: image
  order, then detection order); each detection, in that order, takes its best-IoU
  ground truth among those of its image not matched yet; it is a true positive when that
  IoU is greater than the threshold. AP = mean over recall levels ``r = 0, 0.1, ..., 1``
  (exactly ``k / 10``) of the highest precision at recall ``>= r`` (0 when never reached).
  NaN when the dataset has no ground truth.
- **Matching** at one threshold: one-to-one, greedily by descending IoU (unique anyway
  for thresholds >= 0.5 when the masks of each side do not overlap). TP = matched pairs,
  FP = unmatched predictions, FN = unmatched ground truth. Precision TP/(TP+FP), recall
  TP/(TP+FN), F1 2TP/(2TP+FP+FN), panoptic quality PQ = (sum of matched IoUs)/(TP + FP/2 +
  FN/2) = SQ * RQ. A ratio whose denominator is 0 (nothing predicted and nothing to find)
  is 1.
- **DSB score** of an image: mean over ``t = 0.50, 0.55, ..., 0.95`` of TP/(TP+FP+FN);
  the dataset's DSB mAP is the mean over images (the Kaggle rule).

Predictions are evaluated as given: overlapping masks (possible with ANCIS, one mask per
box) are not resolved. Pass ``Instances.label_image()`` instead to score the
non-overlapping version.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

AP_THRESHOLDS: Tuple[float, ...] = (0.5, 0.7)
DSB_THRESHOLDS: Tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
RECALL_LEVELS = np.arange(11) / 10.0


# ---------------------------------------------------------------------------- IoU

@dataclass
class _Shapes:
    """Instances as inclusive bounds ``[N,4]`` (y1,x1,y2,x2), bool crops and areas."""

    bounds: np.ndarray
    crops: List[np.ndarray]
    areas: np.ndarray
    image_size: Tuple[int, int]


def _from_label_map(labels: np.ndarray) -> _Shapes:
    from .data.sample import label_extents

    ids, bounds = label_extents(labels)
    crops = [labels[y1:y2 + 1, x1:x2 + 1] == i for i, (y1, x1, y2, x2) in zip(ids, bounds)]
    return _Shapes(bounds, crops, np.array([c.sum() for c in crops], np.int64), labels.shape)


def _from_masks(masks: np.ndarray) -> _Shapes:
    bounds = np.zeros((len(masks), 4), np.int64)
    crops = []
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            bounds[k] = (0, 0, -1, -1)  # an empty mask overlaps nothing
            crops.append(np.zeros((0, 0), bool))
            continue
        bounds[k] = (rows[0], cols[0], rows[-1], cols[-1])
        crops.append(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(bool, copy=False))
    return _Shapes(bounds, crops, np.array([c.sum() for c in crops], np.int64), masks.shape[1:])


def as_shapes(instances: np.ndarray, what: str = "instances") -> _Shapes:
    """Accept an integer ``HxW`` label map (0 = background) or ``[N,H,W]`` masks."""
    array = np.asarray(instances)
    if array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
        return _from_label_map(array)
    if array.ndim == 3:
        return _from_masks(array != 0)
    raise ValueError(f"{what} must be an integer HxW label map or [N,H,W] masks; got shape {array.shape}, "
                     f"dtype {array.dtype}")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mask IoU of every prediction with every ground-truth instance.

    Args:
        pred, gt: each an integer ``HxW`` label map or ``[N,H,W]`` bool masks, same ``H, W``.
    Returns:
        float64 ``[N_pred, N_gt]``; label maps contribute their ids in ascending order.
    """
    p, g = as_shapes(pred, "pred"), as_shapes(gt, "gt")
    if p.image_size != g.image_size:
        raise ValueError(f"prediction is {p.image_size} but ground truth is {g.image_size}; evaluate at the same size")
    iou = np.zeros((len(p.crops), len(g.crops)))
    top = np.maximum(p.bounds[:, None, :2], g.bounds[None, :, :2])
    bottom = np.minimum(p.bounds[:, None, 2:], g.bounds[None, :, 2:])
    for i, j in zip(*np.nonzero((bottom >= top).all(axis=2))):
        (y1, x1), (y2, x2) = top[i, j], bottom[i, j]
        pa = p.crops[i][y1 - p.bounds[i, 0]:y2 - p.bounds[i, 0] + 1, x1 - p.bounds[i, 1]:x2 - p.bounds[i, 1] + 1]
        ga = g.crops[j][y1 - g.bounds[j, 0]:y2 - g.bounds[j, 0] + 1, x1 - g.bounds[j, 1]:x2 - g.bounds[j, 1] + 1]
        inter = np.count_nonzero(pa & ga)
        if inter:
            iou[i, j] = inter / (p.areas[i] + g.areas[j] - inter)
    return iou


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``[N,M]`` of ``(y1,x1,y2,x2)`` boxes (areas without +1, as :mod:`ancis_fast.boxes`)."""
    import torch

    from .boxes import box_iou as torch_box_iou

    a = torch.as_tensor(np.asarray(pred, np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(gt, np.float64).reshape(-1, 4))
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return torch.nan_to_num(torch_box_iou(a, b)).numpy()


# ---------------------------------------------------------------------------- matching

def match_in_score_order(iou: np.ndarray, thresh: float) -> np.ndarray:
    """Spec §8: bool ``[N]`` true-positive flags of predictions given in descending score
    order (rows of ``iou``); each takes its best unmatched ground truth, TP if IoU > thresh."""
    free = np.ones(iou.shape[1], bool)
    tp = np.zeros(iou.shape[0], bool)
    for i in range(iou.shape[0]):
        if not free.any():
            break
        candidates = np.where(free, iou[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] > thresh:
            tp[i], free[j] = True, False
    return tp


def match_one_to_one(iou: np.ndarray, thresh: float) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by descending IoU over pairs with IoU > thresh.
    Returns ``(pred_index [K], gt_index [K])``."""
    pi, gi = np.nonzero(iou > thresh)
    order = np.argsort(-iou[pi, gi], kind="stable")
    used_p, used_g, keep = set(), set(), []
    for k in order:
        if pi[k] not in used_p and gi[k] not in used_g:
            used_p.add(pi[k])
            used_g.add(gi[k])
            keep.append(k)
    keep = np.array(keep, np.int64)
    return pi[keep], gi[keep]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 1.0


@dataclass
class MatchStats:
    """Counts of a one-to-one matching and the ratios derived from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    sum_iou: float = 0.0

    def __add__(self, other: "MatchStats") -> "MatchStats":
        return MatchStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.sum_iou + other.sum_iou)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs."""
        return _ratio(self.sum_iou, self.tp) if self.tp else (1.0 if not (self.fp or self.fn) else 0.0)

    @property
    def rq(self) -> float:
        """Recognition quality: TP / (TP + FP/2 + FN/2) (= F1)."""
        return self.f1

    @property
    def pq(self) -> float:
        return _ratio(self.sum_iou, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    def to_dict(self) -> Dict[str, float]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "sq": self.sq, "rq": self.rq, "pq": self.pq}


def matching_stats(iou: np.ndarray, thresh: float = 0.5) -> MatchStats:
    """:class:`MatchStats` of an ``[N_pred, N_gt]`` IoU matrix at ``IoU > thresh``."""
    pi, gi = match_one_to_one(iou, thresh)
    n_pred, n_gt = iou.shape
    return MatchStats(len(pi), n_pred - len(pi), n_gt - len(gi), float(iou[pi, gi].sum()))


def dsb_scores(iou: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS) -> np.ndarray:
    """TP/(TP+FP+FN) at each threshold (float64 ``[T]``); its mean is the image's DSB score."""
    out = []
    for t in thresholds:
        s = matching_stats(iou, t)
        out.append(_ratio(s.tp, s.tp + s.fp + s.fn))
    return np.array(out)


def voc07_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC-2007 11-point AP of detections ``scores [N]`` with true-positive flags ``tp [N]``
    against ``num_gt`` ground-truth instances (NaN when ``num_gt == 0``)."""
    if num_gt == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(tp, bool)[order]
    cum_tp = np.cumsum(hits)
    precision = cum_tp / np.arange(1, len(hits) + 1)
    recall = cum_tp / num_gt
    points = [precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in RECALL_LEVELS]
    return float(np.mean(points))


# ---------------------------------------------------------------------------- results

@dataclass
class ImageResult:
    """Everything the dataset summary needs from one image."""

    name: str
    num_gt: int
    scores: np.ndarray  # [N] in descending order
    tp: Dict[float, np.ndarray]  # AP threshold -> [N] flags, in score order
    stats: MatchStats
    dsb_per_threshold: np.ndarray

    @property
    def num_pred(self) -> int:
        return len(self.scores)

    @property
    def dsb(self) -> float:
        return float(self.dsb_per_threshold.mean())

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "num_gt": self.num_gt, "num_pred": self.num_pred, "dsb": self.dsb,
                **self.stats.to_dict()}


def evaluate_iou(iou: np.ndarray, scores: Optional[np.ndarray] = None, name: str = "",
                 ap_thresholds: Sequence[float] = AP_THRESHOLDS, match_thresh: float = 0.5) -> ImageResult:
    """Per-image result from an IoU matrix ``[N_pred, N_gt]`` and prediction scores ``[N]``
    (None: all 1, in the given order)."""
    iou = np.asarray(iou, np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a [N_pred, N_gt] matrix, got shape {iou.shape}")
    scores = np.ones(len(iou)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(iou):
        raise ValueError(f"{len(scores)} scores for {len(iou)} predictions")
    order = np.argsort(-scores, kind="stable")
    iou, scores = iou[order], scores[order]
    return ImageResult(name=name, num_gt=iou.shape[1], scores=scores,
                       tp={t: match_in_score_order(iou, t) for t in ap_thresholds},
                       stats=matching_stats(iou, match_thresh), dsb_per_threshold=dsb_scores(iou))


class Evaluator:
    """Accumulates images and summarises a dataset.

    >>> ev = Evaluator()
    >>> ev.add_masks(instances.masks, instances.scores, gt_labels, name="img1")
    >>> ev.summary()["ap50"]
    """

    def __init__(self, ap_thresholds: Sequence[float] = AP_THRESHOLDS, match_thresh: float = 0.5):
        self.ap_thresholds = tuple(ap_thresholds)
        self.match_thresh = match_thresh
        self.images: List[ImageResult] = []

    def add_iou(self, iou: np.ndarray, scores: Optional[np.ndarray] = None, name: str = "") -> ImageResult:
        result = evaluate_iou(iou, scores, name, self.ap_thresholds, self.match_thresh)
        self.images.append(result)
        return result

    def add_masks(self, pred: np.ndarray, scores: Optional[np.ndarray], gt: np.ndarray, name: str = "") -> ImageResult:
        """``pred``/``gt``: label map ``HxW`` or masks ``[N,H,W]`` (see :func:`mask_iou`)."""
        return self.add_iou(mask_iou(pred, gt), scores, name)

    def add_boxes(self, pred: np.ndarray, scores: Optional[np.ndarray], gt: np.ndarray, name: str = "") -> ImageResult:
        """``pred [N,4]``, ``gt [M,4]`` boxes (y1,x1,y2,x2)."""
        return self.add_iou(box_iou(pred, gt), scores, name)

    def summary(self, images: Optional[Sequence[ImageResult]] = None) -> Dict[str, float]:
        """Dataset metrics: ``ap50``, ``ap70`` (one key per AP threshold, ``ap`` + percent),
        ``dsb_map``, matching stats at ``match_thresh`` over all images, counts.
        ``tp_ratio`` is TP/(TP+FP+FN) at ``match_thresh``, pooled over the images.
        ``images``: summarise only these results (default: all added ones)."""
        images = self.images if images is None else list(images)
        num_gt = sum(r.num_gt for r in images)
        scores = np.concatenate([r.scores for r in images]) if images else np.zeros(0)
        out: Dict[str, float] = {"images": len(images), "num_gt": num_gt, "num_pred": int(len(scores))}
        for t in self.ap_thresholds:
            tp = np.concatenate([r.tp[t] for r in images]) if images else np.zeros(0, bool)
            out[f"ap{round(t * 100)}"] = voc07_ap(scores, tp, num_gt)
        out["dsb_map"] = float(np.mean([r.dsb for r in images])) if images else math.nan
        total = sum((r.stats for r in images), MatchStats())
        out.update(total.to_dict())
        out["tp_ratio"] = _ratio(total.tp, total.tp + total.fp + total.fn)
        return out

    def summary_by_group(self, groups: Sequence[str], order: Sequence[str] = ()) -> Dict[str, Dict[str, float]]:
        """:meth:`summary` of the images of each group (``groups[k]``: the group of the
        ``k``-th added image): the groups of ``order`` that occur, then others in order of
        first appearance, then ``"all"``."""
        if len(groups) != len(self.images):
            raise ValueError(f"{len(groups)} group names for {len(self.images)} images")
        names = [g for g in order if g in groups] + [g for g in dict.fromkeys(groups) if g not in order]
        out = {g: self.summary([r for r, h in zip(self.images, groups) if h == g]) for g in names}
        out["all"] = self.summary()
        return out

    def per_image(self) -> List[Dict[str, object]]:
        return [r.to_dict() for r in self.images]


def format_summary(summary: Dict[str, float]) -> str:
    """One human-readable block of the dataset metrics."""
    aps = "  ".join(f"AP@{int(k[2:]) / 100:g}={v:.4f}" for k, v in summary.items() if k.startswith("ap"))
    return (f"images={summary['images']}  gt={summary['num_gt']}  pred={summary['num_pred']}\n"
            f"{aps}  DSB mAP={summary['dsb_map']:.4f}\n"
            f"IoU>0.5: TP={summary['tp']} FP={summary['fp']} FN={summary['fn']}  precision={summary['precision']:.4f} "
            f"recall={summary['recall']:.4f} F1={summary['f1']:.4f}  PQ={summary['pq']:.4f} "
            f"(SQ={summary['sq']:.4f} RQ={summary['rq']:.4f})")


def format_group_table(summaries: Dict[str, Dict[str, float]]) -> str:
    """A Markdown table, one row per group: images, nuclei, DSB score, F1@0.5,
    TP/(TP+FP+FN)@0.5 and AP@0.5/0.7."""
    lines = ["| class | images | nuclei | DSB score | F1@0.5 | TP/(TP+FP+FN)@0.5 | AP@0.5 | AP@0.7 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['images']} | {s['num_gt']} | {s['dsb_map']:.3f} | {s['f1']:.3f} | "
                     f"{s['tp_ratio']:.3f} | {s.get('ap50', math.nan):.3f} | {s.get('ap70', math.nan):.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI

def _prediction_file(folder: Path, stem: str) -> Path:
    from .io.readers import IMAGE_SUFFIXES

    for name in (f"{stem}_labels", stem):
        for suffix in IMAGE_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    raise FileNotFoundError(f"no predicted label image for {stem!r} in {str(folder)!r} "
                            f"(expected {stem}_labels.tif|png or {stem}.tif|png)")


def _evaluate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.classes import IMAGE_CLASSES
    from .data.layouts import open_dataset
    from .data.split import select_split
    from .io.readers import read_image
    from .io.writers import write_text
    from .models.weights import CheckpointError

    try:
        dataset = select_split(open_dataset(args.data, args.layout), args.split)
        predictor = None
        if args.pred is None:
            from .cli import build_predictor

            predictor = build_predictor(args)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evaluator = Evaluator()
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    for index in tqdm(range(count), desc="evaluating", unit="img", disable=args.quiet):
        sample = dataset[index]
        try:
            if predictor is None:
                evaluator.add_masks(read_image(_prediction_file(Path(args.pred), sample.name)), None, sample.labels,
                                    sample.name)
            else:
                instances = predictor.predict(sample.image)
                evaluator.add_masks(instances.masks, instances.scores, sample.labels, sample.name)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {sample.name}: {exc}", file=sys.stderr)
            return 1
    summary = evaluator.summary()
    classes = dataset.classes[:count]
    by_class = evaluator.summary_by_group(classes, IMAGE_CLASSES)
    print(format_summary(summary))
    print(format_group_table(by_class))
    rows = [{**row, "image_class": name} for row, name in zip(evaluator.per_image(), classes)]
    if args.json:
        write_text(args.json, json.dumps({"summary": summary, "by_class": by_class, "images": rows}, indent=1))
    if args.csv:
        import io as _io

        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(args.csv, buffer.getvalue())
    return 0


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    from .cli import add_model_arguments

    parser = subparsers.add_parser(
        "evaluate", help="score a model (or saved label images) on an annotated dataset",
        description="Mask AP@0.5/0.7 (VOC-07 11-point, spec §8), DSB mAP (IoU 0.5:0.05:0.95) and TP/FP/FN, "
                    "precision, recall, F1, panoptic quality at IoU > 0.5; overall and per image class "
                    "(fluorescence, tissue, brightfield: ancis_fast.data.classes).")
    parser.add_argument("data", help="dataset folder (DSB layout or images/ + masks/)")
    parser.add_argument("--layout", choices=["auto", "dsb", "labels"], default="auto",
                        help="dataset layout (default: auto)")
    parser.add_argument("--pred", help="folder of predicted label images (<stem>_labels.tif|png) to score instead "
                                       "of running a model; all scores count as 1")
    parser.add_argument("--split", choices=["all", "train", "val"], default="all",
                        help="score only this part of the dataset's seeded split, stratified by image class "
                             "(ancis_fast.data.split; the split train-det/train-seg --split train leaves out)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--json", help="write summary + per-image metrics to this JSON file")
    parser.add_argument("--csv", help="write per-image metrics to this CSV file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    parser.set_defaults(func=_evaluate_command)
