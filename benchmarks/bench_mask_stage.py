"""Mask-stage cost on realistic boxes: the ground-truth boxes of a synthetic 512² image with
~120 nuclei of ~24 px (random network weights: the cost does not depend on them), with the
FLOPs of each stage, so that times can be read against the machine's throughput.

    python benchmarks/bench_mask_stage.py [--device cuda]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import random_models  # noqa: E402

from ancis_fast.data.sample import boxes_from_labels  # noqa: E402
from ancis_fast.data.synthetic import SynthConfig, generate  # noqa: E402
from ancis_fast.pipeline import reference  # noqa: E402
from ancis_fast.pipeline.fast import FastPipeline, PaddedDetections  # noqa: E402
from ancis_fast.pipeline.preprocess import preprocess  # noqa: E402


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def report(name: str, fn, repeats: int = 3) -> None:
    seconds, work = best_seconds(fn, repeats), gflop(fn)
    print(f"{name:28s} {seconds * 1000:8.1f} ms  {work:6.1f} GFLOP  {work / seconds:6.1f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    device = torch.device(parser.parse_args().device)
    config = SynthConfig(size=(512, 512), diameter=(18, 30), count=(80, 140), p_16bit=0, p_colour=0, p_brightfield=0)
    sample = generate((7, 0), config)
    boxes = torch.as_tensor(boxes_from_labels(sample.labels)[0], dtype=torch.float32, device=device)
    print(f"{len(boxes)} boxes, mean size {(boxes[:, 2:] - boxes[:, :2]).mean(0).tolist()} px; "
          f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    detector, segmenter = (model.to(device) for model in random_models())
    x, original_size = preprocess(sample.image, (512, 512))
    x = x.to(device)
    with torch.inference_mode():
        _, _, features = detector(x)
        report("reference detector", lambda: detector(x), 1)
        report("reference mask stage", lambda: reference.segment(
            segmenter, [segmenter.encode_c0(features[0])] + list(features[1:]), boxes), 1)
        n = len(boxes)
        detections = PaddedDetections(boxes[None], torch.ones(1, n, device=device),
                                      torch.ones(1, n, dtype=torch.long, device=device),
                                      torch.full((1,), n, dtype=torch.long, device=device))
        for mode in ("exact", "fast"):
            pipeline = FastPipeline(detector, segmenter, (512, 512), mode=mode).to(device)
            x_fast, _, _, fast_features = pipeline.run_detector(x)
            plan = pipeline.plan(detections, [original_size])
            report(f"{mode}: detector", lambda: pipeline.run_detector(x))
            report(f"{mode}: mask stage", lambda: pipeline.segment(x_fast, fast_features, detections, plan))
            probs, sizes = pipeline.segment(x_fast, fast_features, detections, plan)
            report(f"{mode}: paste", lambda: pipeline.paste(detections, probs, sizes, [original_size], plan), 1)


if __name__ == "__main__":
    main()
