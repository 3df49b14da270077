"""Native tile sizes compared: speed, the shift test and accuracy, in one run.

For each tile size, every image of a dataset folder (default: the five 603x1272
fluorescence images of the DSB 2018 training set the shift test uses) is segmented in
native tiles, and again moved by ``--shift`` px (padded with its median at the top and
left) so that the seams fall elsewhere. Printed per tile size:

- seconds per megapixel of the unmoved images (the time of ``predict`` alone);
- the shift test: each cell's best mask IoU with the other run's cells (both ways), its
  mean and the share below 0.8, over all cells and apart for those within the overlap of
  a seam in either run ("near seams") and the others: where the two shares are alike, the
  cells move with the tiles' content, not with how the seams are stitched;
- against the truth: F1@0.5 and the DSB score of the unmoved run.

    python benchmarks/tile_size.py DATA [--tiles 512,1024] [--names ID_PREFIX ...] [--conf-thresh T]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ancis_fast import Predictor
from ancis_fast.config import PredictorConfig
from ancis_fast.data.sample import label_extents
from ancis_fast.evaluate import dsb_scores, mask_iou, matching_stats
from ancis_fast.io.readers import read_image
from ancis_fast.tiling import tile_windows

#: the five 603x1272 fluorescence images of the DSB 2018 stage-1 training set (its largest
#: fluorescence ones), by the start of their ids
WIDE_FLUORESCENCE = ("20b20ab04937", "538b7673d507", "a102535b0e88", "cb4df20a83b2", "f4c4db3df4ff")
OVERLAP = 64  # px, the Predictor's default


def seam_lines(height: int, width: int, tile: int, shift: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(rows, columns)`` where the tiles of a ``height x width`` image begin or end inside
    it, less ``shift`` (the seams of a moved image in the unmoved image's pixels)."""
    windows = tile_windows(height, width, tile, OVERLAP)
    rows = sorted({v for w in windows for v in (w[0], w[2]) if 0 < v < height})
    columns = sorted({v for w in windows for v in (w[1], w[3]) if 0 < v < width})
    return np.array(rows, np.int64) - shift, np.array(columns, np.int64) - shift


def near_seams(labels: np.ndarray, seams: Sequence[Tuple[np.ndarray, np.ndarray]], reach: int) -> np.ndarray:
    """For each cell of ``labels`` (ids ascending), whether its extent comes within
    ``reach`` px of one of the ``(rows, columns)`` seam lines ``[N] bool``."""
    _, bounds = label_extents(labels)
    near = np.zeros(len(bounds), bool)
    for rows, columns in seams:
        for lines, low, high in ((rows, bounds[:, 0], bounds[:, 2]), (columns, bounds[:, 1], bounds[:, 3])):
            for line in lines:
                near |= (low - reach <= line) & (line <= high + reach)
    return near


def shift_agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each cell's best mask IoU with the other label image's cells, both ways ``[N1 + N2]``."""
    ious = mask_iou(first, second)
    return np.concatenate([ious.max(axis=1), ious.max(axis=0)])


def measure(predictor: Predictor, images: Sequence[np.ndarray], truths: Sequence[np.ndarray], tile: int,
            shift: int) -> Dict[str, float]:
    seconds, pixels, agreement, near, f1, dsb = 0.0, 0, [], [], [], []
    for image, truth in zip(images, truths):
        started = time.perf_counter()
        labels = predictor.predict(image, tile=tile, overlap=OVERLAP).without_overlaps().label_image()
        seconds += time.perf_counter() - started
        pixels += image.shape[0] * image.shape[1]
        moved = np.pad(image, ((shift, 0), (shift, 0)) + ((0, 0),) * (image.ndim - 2), constant_values=np.median(image))
        moved_labels = predictor.predict(moved, tile=tile, overlap=OVERLAP).without_overlaps().label_image()
        moved_labels = moved_labels[shift:, shift:]
        agreement.append(shift_agreement(labels, moved_labels))
        height, width = image.shape[:2]
        seams = [seam_lines(height, width, tile), seam_lines(height + shift, width + shift, tile, shift)]
        near.append(np.concatenate([near_seams(labels, seams, OVERLAP), near_seams(moved_labels, seams, OVERLAP)]))
        to_truth = mask_iou(labels, truth)
        f1.append(matching_stats(to_truth, 0.5).f1)
        dsb.append(dsb_scores(to_truth).mean())
    agreement, near = np.concatenate(agreement), np.concatenate(near)
    below = agreement < 0.8
    return {"tile": tile, "s_per_mpx": seconds / pixels * 1e6, "cells": len(agreement),
            "mean_iou": float(agreement.mean()), "below_0.8": float(below.mean()),
            "near_seams": int(near.sum()), "below_0.8_near_seams": float(below[near].mean()) if near.any() else 0.0,
            "below_0.8_elsewhere": float(below[~near].mean()) if (~near).any() else 0.0,
            "f1": float(np.mean(f1)), "dsb": float(np.mean(dsb))}


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dataset folder with images/ and masks/ (label images of the same names)")
    parser.add_argument("--names", nargs="*", default=list(WIDE_FLUORESCENCE), help="image name prefixes")
    parser.add_argument("--tiles", default="512,1024", help="tile sizes, comma-separated")
    parser.add_argument("--shift", type=int, default=256)
    parser.add_argument("--weights-det")
    parser.add_argument("--weights-seg")
    parser.add_argument("--conf-thresh", type=float, default=PredictorConfig().conf_thresh,
                        help="detection score threshold (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(list(argv) or None)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    paths = [next((root / "images").glob(f"{name}*"), None) for name in args.names]
    missing = [name for name, path in zip(args.names, paths) if path is None]
    if missing:
        parser.error(f"no image in {root / 'images'} starts with {', '.join(missing)}")
    images = [read_image(path) for path in paths]
    truths = [read_image(root / "masks" / path.name).astype(np.int32) for path in paths]
    predictor = Predictor(args.weights_det, args.weights_seg, conf_thresh=args.conf_thresh)
    print(f"{'tile':>5} {'s/Mpx':>7} {'cells':>6} {'mean IoU':>9} {'< 0.8':>7} {'near seams':>11} {'< 0.8 there':>12} "
          f"{'elsewhere':>10} {'F1@0.5':>7} {'DSB':>6}", flush=True)
    rows: List[Dict[str, float]] = []
    for tile in (int(t) for t in args.tiles.split(",")):
        row = measure(predictor, images, truths, tile, args.shift)
        rows.append(row)
        print(f"{tile:>5} {row['s_per_mpx']:7.2f} {row['cells']:>6} {row['mean_iou']:9.3f} {row['below_0.8']:7.1%} "
              f"{row['near_seams']:>11} {row['below_0.8_near_seams']:12.1%} {row['below_0.8_elsewhere']:10.1%} "
              f"{row['f1']:7.3f} {row['dsb']:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
