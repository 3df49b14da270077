"""The settings tied to a model, measured on the validation split of a dataset folder.

For a detector + mask head pair, segments every validation image under each setting and
prints DSB score, F1@0.5 and AP@0.5 per image class:

- ``default``: ``PredictorConfig()`` (``zoom="auto"``, ``conf_thresh`` 0.3);
- ``zoom=1``: never zoom (is the auto-zoom rule still worth it for this model?);
- ``conf=T``: another detection threshold;
- ``best=D``: each image given its true nucleus diameter, scaled so that nuclei measure
  ``D`` px at the network (what ``zoom.BEST_DIAMETER`` would be if set to ``D``).

    python benchmarks/model_settings.py DATA [--weights-det D --weights-seg S] [--json out.json]

Without weights, the bundled model is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ancis_fast import Predictor, PredictorConfig
from ancis_fast.data.classes import IMAGE_CLASSES
from ancis_fast.data.layouts import open_dataset
from ancis_fast.data.split import select_split
from ancis_fast.evaluate import Evaluator
from ancis_fast.io.writers import write_text
from ancis_fast.zoom import BEST_DIAMETER, median_diameter

Setting = Tuple[str, Dict[str, object], float]  # name, config overrides, best diameter (0: none)


def label_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter ``sqrt(4 area / pi)`` of the instances of a label map (px)."""
    return median_diameter(np.bincount(labels.ravel())[1:])


def settings(conf: Sequence[float], best: Sequence[float], plain: bool = True) -> List[Setting]:
    out: List[Setting] = [("default", {}, 0.0), ("zoom=1", {"zoom": 1.0}, 0.0)] if plain else []
    out += [(f"conf={t:g}", {"conf_thresh": t}, 0.0) for t in conf]
    out += [(f"best={d:g}", {}, d) for d in best]
    return out


def measure(samples, classes: Sequence[str], predictor_for, setting: Setting) -> Dict[str, Dict[str, float]]:
    _, overrides, best = setting
    evaluator = Evaluator()
    for sample in samples:
        extra = dict(overrides)
        if best:
            # diameter_scale enlarges by BEST_DIAMETER / diameter: this makes it best / true diameter
            extra["diameter"] = label_diameter(sample.labels) * BEST_DIAMETER / best
        found = predictor_for(extra).predict(sample.image)
        evaluator.add_masks(found.masks, found.scores, sample.labels, sample.name)
    return evaluator.summary_by_group(list(classes), IMAGE_CLASSES)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dataset folder (DSB or images/ + masks/ layout)")
    parser.add_argument("--split", default="val", choices=["all", "train", "val"])
    parser.add_argument("--weights-det")
    parser.add_argument("--weights-seg")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--conf", type=float, nargs="*", default=[0.2, 0.4, 0.5])
    parser.add_argument("--best", type=float, nargs="*", default=[24, 30, 36, 44])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N images of the split (a quick check)")
    parser.add_argument("--no-plain", action="store_true", help="skip the default and zoom=1 settings")
    parser.add_argument("--json", help="write every setting's per-class figures here")
    args = parser.parse_args(list(argv) or None)
    torch.set_num_threads(args.threads)
    dataset = select_split(open_dataset(args.data), args.split)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    samples, classes = [dataset[i] for i in range(count)], dataset.classes[:count]
    base = Predictor(args.weights_det, args.weights_seg, backend=args.backend)

    def predictor_for(overrides: Dict[str, object]) -> Predictor:
        return Predictor.from_models(base.detector, base.segmenter, backend=args.backend,
                                     config=PredictorConfig(**overrides)) if overrides else base

    results = {}
    print(f"{'setting':<10} {'class':<13} {'DSB':>6} {'F1':>6} {'AP50':>6}  images", flush=True)
    for setting in settings(args.conf, args.best, not args.no_plain):
        start = time.perf_counter()
        by_class = measure(samples, classes, predictor_for, setting)
        results[setting[0]] = {**by_class, "seconds": time.perf_counter() - start}
        for group, s in by_class.items():
            print(f"{setting[0]:<10} {group:<13} {s['dsb_map']:6.3f} {s['f1']:6.3f} {s['ap50']:6.3f}  {s['images']}",
                  flush=True)
    if args.json:
        write_text(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
