"""Dask scale-out (ancis_fast.distributed) against one process, with agreement beside the times.

    python benchmarks/distributed_scaling.py --workers 1,2 --out /tmp/dask_bench

A synthetic 16-bit gray image (``ancis_fast.data.synthetic``, nuclei 14-22 px) is stored as
a zarr array in ``--chunk`` px chunks and segmented (bundled model, ``--backend``, zoom 1)
by one process with ``predict(image, tile=512, overlap=64)`` and by LocalClusters of each
``--workers`` count (worker processes, one thread each) in ``--chunk`` blocks. Reported:
wall times, the per-block worker time (dask's task stream) and a 100,000² estimate from
it, and agreement: cell counts, pairs of instances with mask IoU > 0.3 (stitching drops the
lower-scoring or worse-placed one, so there should be none), and how many of the true cells
that a block window's inner edge crosses each run found (IoU > 0.5).
``tests/test_distributed.py`` runs :func:`compare` (slow) and asserts on its answer.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ancis_fast import Instances, Predictor
from ancis_fast.data.synthetic import SynthConfig, generate
from ancis_fast.distributed import PredictorSpec, client_for, close_client, segment_image
from ancis_fast.masks import patch_intersection
from ancis_fast.tiling import DUPLICATE_IOU, tile_starts

SLIDE = 100_000  # px a side, for the estimate


def make_zarr(path: Path, size: int, chunk: int, seed: int = 7) -> np.ndarray:
    """The synthetic image (16-bit gray) written to ``path``; returns its true labels."""
    import zarr

    sample = generate(seed, SynthConfig(size=size, diameter=(14, 22), count=(size * size // 1100,) * 2,
                                        p_16bit=1.0, p_colour=0.0, p_brightfield=0.0))
    array = zarr.open_array(str(path), mode="w", shape=sample.image.shape, chunks=(chunk, chunk),
                            dtype=sample.image.dtype)
    array[...] = sample.image
    return sample.labels


def pair_ious(instances: Instances) -> np.ndarray:
    """Mask IoUs of all pairs of different instances whose boxes overlap."""
    boxes, patches = instances.boxes, instances.mask_patches
    areas = patches.areas
    ious = [0.0]
    for i in range(len(instances)):
        near = np.flatnonzero((boxes[:, 0] < boxes[i, 2]) & (boxes[i, 0] < boxes[:, 2]) &
                              (boxes[:, 1] < boxes[i, 3]) & (boxes[i, 1] < boxes[:, 3]))
        for j in near[near > i]:
            shared = patch_intersection(patches.patches[i], patches.origins[i], patches.patches[j], patches.origins[j])
            ious.append(shared / max(areas[i] + areas[j] - shared, 1))
    return np.array(ious)


def seam_cells(truth: np.ndarray, block: int, overlap: int) -> np.ndarray:
    """Ids of the true cells that an inner edge of a block window crosses (one window
    cuts them, so stitching must take them from another)."""
    crossing: List[np.ndarray] = []
    window = block + overlap
    for axis in (0, 1):
        length = truth.shape[axis]
        starts = tile_starts(length, window, overlap)
        for at in starts[1:] + [s + window for s in starts[:-1]]:
            before, after = np.take(truth, at - 1, axis=axis), np.take(truth, at, axis=axis)
            crossing.append(before[(before == after) & (before > 0)])
    return np.unique(np.concatenate(crossing)) if crossing else np.zeros(0, np.int64)


def found(truth: np.ndarray, instances: Instances, ids: np.ndarray) -> np.ndarray:
    """For each true cell ``ids``: whether an instance covers it with mask IoU > 0.5."""
    labels = instances.label_image().astype(np.int64)
    areas = np.bincount(labels.ravel(), minlength=len(instances) + 1)
    result = []
    for cell in ids:
        mask = truth == cell
        hits = np.bincount(labels[mask], minlength=len(areas))
        hits[0] = 0
        best = int(hits.argmax())
        result.append(best > 0 and hits[best] / (mask.sum() + areas[best] - hits[best]) > 0.5)
    return np.array(result, bool)


def compare(out: Path, size: int = 4096, chunk: int = 1024, workers: Sequence[int] = (2,), backend: str = "eager",
            overlap: int = 64, single: bool = True) -> Dict[str, object]:
    """Segment the synthetic image once in one process and on each cluster size; the figures."""
    out.mkdir(parents=True, exist_ok=True)
    truth = make_zarr(out / "synthetic.zarr", size, chunk)
    options = dict(backend=backend, zoom=1.0)
    report: Dict[str, object] = {"size": size, "chunk": chunk, "backend": backend, "true_cells": int(truth.max())}
    reference: Optional[Instances] = None
    if single:
        import zarr

        torch.set_num_threads(1)
        started = time.perf_counter()
        reference = Predictor(**options).predict(zarr.open(str(out / "synthetic.zarr"), mode="r")[...], tile=512,
                                                 overlap=overlap)
        report["single"] = {"seconds": time.perf_counter() - started, "cells": len(reference),
                            "pairs_over_duplicate_iou": int((pair_ious(reference) > DUPLICATE_IOU).sum())}
    for count in workers:
        from distributed import get_task_stream

        client = client_for(workers=count)
        try:
            with get_task_stream(client) as stream:
                result = segment_image(client, out / "synthetic.zarr", out / f"workers{count}",
                                       PredictorSpec.of(options), overlap=overlap, tile=512, keep_instances=True)
        finally:
            close_client(client)
        assert not result.failed, result.failed
        seams = seam_cells(truth, result.block, overlap)
        block_seconds = [sum(stop - start for action, start, stop in
                             ((s["action"], s["start"], s["stop"]) for s in task["startstops"]) if action == "compute")
                         for task in stream.data if "_segment_window" in str(task["key"])]
        per_block = float(np.mean(block_seconds)) if block_seconds else float("nan")
        slide_blocks = len(tile_starts(SLIDE, result.block + overlap, overlap)) ** 2
        report[f"workers{count}"] = {
            "seconds": result.seconds, "timings": result.timings, "cells": result.cells, "blocks": result.blocks,
            "block_seconds_mean": per_block, "max_pair_iou": float(pair_ious(result.instances).max()),
            "pairs_over_duplicate_iou": int((pair_ious(result.instances) > DUPLICATE_IOU).sum()),
            "block": result.block, "seam_cells": len(seams),
            "seam_cells_found": int(found(truth, result.instances, seams).sum()),
            "slide_blocks": slide_blocks, "slide_hours_per_worker": slide_blocks * per_block / 3600,
        }
        if reference is not None:
            report[f"workers{count}"].update(
                count_diff=abs(result.cells - len(reference)) / max(len(reference), 1),
                seam_cells_found_single=int(found(truth, reference, seams).sum()))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workers", default="1,2", help="comma list of LocalCluster sizes")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--no-single", action="store_true", help="skip the single-process run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = compare(args.out, args.size, args.chunk, [int(n) for n in args.workers.split(",")], args.backend,
                     single=not args.no_single)
    print(json.dumps(report, indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
