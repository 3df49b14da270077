"""Speed of the whole static fast pipeline (detector + detection + mask stage, one graph) on a
GPU: eager, and replayed as one CUDA graph, with the device paste, at batch 1 and 8.

    python benchmarks/bench_static_pipeline.py --device cuda --precision fp16

Bundled model, the bundled sample image repeated; budgets from that image (2x headroom,
``ancis_fast.export.static_budgets``). Prints ms per batch (median of ``--iters``) and images/s;
the masks are checked against the eager pipeline's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ancis_fast import Predictor  # noqa: E402
from ancis_fast.backends.cudagraph import CudaGraphPipeline  # noqa: E402
from ancis_fast.io.readers import read_image  # noqa: E402
from ancis_fast.models.weights import ASSETS  # noqa: E402
from ancis_fast.pipeline.fast import PaddedDetections, static_budgets  # noqa: E402
from ancis_fast.pipeline.preprocess import preprocess  # noqa: E402


def timed(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    predictor = Predictor(backend="eager", device=args.device, precision=args.precision, zoom=1)
    image = read_image(ASSETS / "sample.png")
    x1, size = preprocess(image, predictor.config.input_size)
    core = predictor.pipeline.core(256)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.precision}")
    print("| batch | path | ms/batch | img/s |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        x = x1.repeat(batch, 1, 1, 1).to(args.device)
        static = core.core(shape_budgets=static_budgets(core, x)).eval()
        graph = CudaGraphPipeline(static, x)
        sizes = [size] * batch

        def paste(outputs):  # the paste windows come from the plan's one read of the device
            boxes, scores, labels, counts, probs, mask_sizes = outputs
            det = PaddedDetections(boxes, scores, labels, counts)
            plan = predictor.pipeline.plan(det, sizes)
            return predictor.pipeline.paste(det, probs, mask_sizes, sizes, plan)

        with torch.inference_mode():
            rows = {"predict_batch (eager, plan per batch)": lambda: predictor.predict_batch([image] * batch,
                                                                                              batch_size=batch),
                    "static graph, eager": lambda: static(x),
                    "static graph, CUDA graph": lambda: graph(x),
                    "CUDA graph + device paste": lambda: paste(graph(x))}
            for name, fn in rows.items():
                ms = timed(fn, args.iters)
                print(f"| {batch} | {name} | {ms:.2f} | {batch * 1000 / ms:.0f} |", flush=True)
            expected, got = static(x), graph(x)
            print(f"| {batch} | graph vs eager max |Δprobs| | {(expected[4] - got[4]).abs().max().item():.2e} | |")


if __name__ == "__main__":
    main()
