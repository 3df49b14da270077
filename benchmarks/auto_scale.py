"""When is a second, rescaled pass worth its time? Measured on a dataset's validation split.

Every image is segmented once as the spec does (``zoom=1``: the whole image resized to
the input) and timed. The median diameter of the cells found gives the scale that makes
nuclei measure ``--best`` px at the network; each image is segmented again at that scale
(``diameter=...``) and timed. The rule "rescale when the scale asked for differs from the
plain resize by more than a factor B" is then scored for each band B (``1``: always,
``inf``: never), per image class: DSB score, F1@0.5, AP@0.5, the share of images
rescaled and seconds per image.

    python benchmarks/auto_scale.py DATA [--bands 1,1.25,1.5,2,inf] [--best 36]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ancis_fast import Predictor, PredictorConfig
from ancis_fast.data.classes import IMAGE_CLASSES
from ancis_fast.data.layouts import open_dataset
from ancis_fast.data.split import select_split
from ancis_fast.evaluate import Evaluator, ImageResult
from ancis_fast.zoom import BEST_DIAMETER, check_diameter, median_diameter


def diameter_setting(diameter: float, best: float) -> Optional[float]:
    """The ``diameter`` setting that brings nuclei of ``diameter`` image px to ``best`` px at
    the network (``diameter_scale`` enlarges by ``BEST_DIAMETER / diameter``); ``None``
    when out of range."""
    try:
        return check_diameter(diameter * BEST_DIAMETER / best) if diameter > 0 else None
    except ValueError:
        return None


class Passes:
    """Both passes of every image: results, seconds and how far apart their scales are."""

    def __init__(self) -> None:
        self.first: List[ImageResult] = []
        self.second: List[ImageResult] = []
        self.first_seconds: List[float] = []
        self.second_seconds: List[float] = []
        self.ratios: List[float] = []  # asked-for scale / plain resize scale (1: no second pass possible)

    def choose(self, band: float) -> Tuple[List[ImageResult], List[float], List[bool]]:
        """Per image the result and time under the rule with ``band``, and whether it rescaled."""
        rescaled = [abs(math.log(r)) > math.log(band) for r in self.ratios]
        results = [s if r else f for f, s, r in zip(self.first, self.second, rescaled)]
        seconds = [f + (s if r else 0.0) for f, s, r in zip(self.first_seconds, self.second_seconds, rescaled)]
        return results, seconds, rescaled


def run_passes(samples, predictor: Predictor, best: float) -> Passes:
    plain = Predictor.from_models(predictor.detector, predictor.segmenter, backend=predictor.backend,
                                  config=PredictorConfig(zoom=1.0))
    passes = Passes()
    for sample in samples:
        started = time.perf_counter()
        first = plain.predict(sample.image)
        passes.first_seconds.append(time.perf_counter() - started)
        evaluator = Evaluator()
        passes.first.append(evaluator.add_masks(first.masks, first.scores, sample.labels, sample.name))
        diameter = diameter_setting(median_diameter(first.areas), best)
        if diameter is None:
            passes.second.append(passes.first[-1])
            passes.second_seconds.append(0.0)
            passes.ratios.append(1.0)
            continue
        scaled = Predictor.from_models(predictor.detector, predictor.segmenter, backend=predictor.backend,
                                       config=PredictorConfig(diameter=diameter))
        started = time.perf_counter()
        second = scaled.predict(sample.image)
        passes.second_seconds.append(time.perf_counter() - started)
        passes.second.append(evaluator.add_masks(second.masks, second.scores, sample.labels, sample.name))
        height, width = sample.image.shape[:2]
        plain_scale = math.sqrt(plain.config.input_size[0] * plain.config.input_size[1] / (height * width))
        passes.ratios.append(second.meta["scale"] / plain_scale)
    return passes


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dataset folder (DSB or images/ + masks/ layout)")
    parser.add_argument("--split", default="val", choices=["all", "train", "val"])
    parser.add_argument("--weights-det")
    parser.add_argument("--weights-seg")
    parser.add_argument("--best", type=float, default=BEST_DIAMETER, help="nucleus px at the network to scale to")
    parser.add_argument("--bands", default="1,1.25,1.5,2,inf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N images of the split (a quick check)")
    args = parser.parse_args(list(argv) or None)
    torch.set_num_threads(args.threads)
    dataset = select_split(open_dataset(args.data), args.split)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    samples, classes = [dataset[i] for i in range(count)], dataset.classes[:count]
    passes = run_passes(samples, Predictor(args.weights_det, args.weights_seg, backend="eager"), args.best)
    print(f"{'band':>5} {'class':<13} {'DSB':>6} {'F1':>6} {'AP50':>6} {'rescaled':>9} {'s/image':>8}")
    for band in (float(b) for b in args.bands.split(",")):
        results, seconds, rescaled = passes.choose(band)
        evaluator = Evaluator()
        evaluator.images = results
        summaries: Dict[str, Dict[str, float]] = evaluator.summary_by_group(list(classes), IMAGE_CLASSES)
        for group, s in summaries.items():
            members = [k for k, c in enumerate(classes) if group in ("all", c)]
            print(f"{band:>5g} {group:<13} {s['dsb_map']:6.3f} {s['f1']:6.3f} {s['ap50']:6.3f} "
                  f"{np.mean([rescaled[k] for k in members]):9.0%} {np.mean([seconds[k] for k in members]):8.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
