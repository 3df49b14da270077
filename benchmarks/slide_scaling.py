"""Whole-slide scaling of ancis_fast.distributed with a stand-in segmenter whose answer is exact.

    python benchmarks/slide_scaling.py --sizes 4096,8192,16384 --workers 2 --out /tmp/slides

For each ``--sizes`` side a slide of painted disks is written as an 8-bit zarr array in
``--chunk`` px chunks (disks of radius 4-8 px on a jittered 24 px grid, never touching:
(side // 24)² of them; 465,124 at 16384²), then segmented by :func:`segment_image` on a
LocalCluster of ``--workers`` processes (one thread each) with a stand-in segmenter
(connected components, through ``PredictorSpec.of(factory=...)``, tiled inside each
window like ``Predictor.predict(tile=512)``). Reported per slide: disks, cells, seconds
per stage (``statistics``, ``blocks``: segmenting, ``stitch``: seams and ids, ``write``:
labels and table; all on the workers) and in all, the client's peak resident memory while
it ran (psutil, sampled every 50 ms), and whether every disk is one label, whole, with
nothing else labelled and one table row per cell. Written to ``<out>/slide_scaling.json``
and ``.csv``.

``--model-side N`` adds the bundled model (eager, zoom 1) on an ``N``² synthetic 16-bit
slide (``ancis_fast.data.synthetic``, nuclei 14-22 px, one per 1,100 px²): cells found
against the true count, seconds per stage, client memory.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ancis_fast.config import PredictorConfig
from ancis_fast.distributed import PredictorSpec, client_for, close_client, segment_image
from ancis_fast.instances import Instances
from ancis_fast.masks import PatchMasks
from ancis_fast.tiling import predict_tiled

SPACING = 24  # px between disk centres (before jitter)


def components(gray: np.ndarray) -> Instances:
    """Each 8-connected bright blob is a cell, scored by its mean brightness / 255."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((gray > 0).astype(np.uint8), connectivity=8)
    sums = np.bincount(labels.ravel(), weights=gray.ravel(), minlength=count)[1:]
    scores = sums / np.maximum(stats[1:, cv2.CC_STAT_AREA], 1) / 255
    order = np.argsort(-scores, kind="stable")
    x, y, w, h = (stats[1:, k][order] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                 cv2.CC_STAT_HEIGHT))
    patches = [labels[y[i] : y[i] + h[i], x[i] : x[i] + w[i]] == order[i] + 1 for i in range(len(order))]
    boxes = np.stack([y, x, y + h, x + w], axis=1).astype(np.float32).reshape(-1, 4)
    return Instances(boxes, scores[order], PatchMasks(patches, np.stack([y, x], axis=1).reshape(-1, 2), gray.shape))


class PaintedDisks:
    """The stand-in predictor: :func:`components`, in tiles when ``tile`` is given."""

    config = PredictorConfig()

    def predict(self, image: np.ndarray, tile=None, overlap: int = 64) -> Instances:
        gray = image.max(axis=2) if image.ndim == 3 else image
        return components(gray) if tile is None else predict_tiled(gray, components, tile, overlap)


def disk_layout(side: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Centres ``cy, cx``, radii ``r`` and brightness ``value`` of the slide's disks."""
    rng = np.random.default_rng(seed)
    n = side // SPACING
    iy, ix = (a.ravel() for a in np.mgrid[:n, :n])
    return {"cy": SPACING // 2 + SPACING * iy + rng.integers(-2, 3, n * n),
            "cx": SPACING // 2 + SPACING * ix + rng.integers(-2, 3, n * n),
            "r": rng.integers(4, 9, n * n), "value": rng.integers(60, 256, n * n)}


def paint(disks: Dict[str, np.ndarray], area: Tuple[int, int, int, int], ids: bool = False) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` of the slide: brightness, or with ``ids`` disk index + 1 (int32)."""
    y0, y1, x0, x1 = area
    cy, cx, r = disks["cy"], disks["cx"], disks["r"]
    canvas = np.zeros((y1 - y0, x1 - x0), np.int32 if ids else np.uint8)
    for i in np.flatnonzero((cy + r >= y0) & (cy - r < y1) & (cx + r >= x0) & (cx - r < x1)):
        value = int(i) + 1 if ids else int(disks["value"][i])
        cv2.circle(canvas, (int(cx[i] - x0), int(cy[i] - y0)), int(r[i]), value, -1)
    return canvas


def chunk_areas(side: int, chunk: int) -> List[Tuple[int, int, int, int]]:
    return [(y, min(y + chunk, side), x, min(x + chunk, side)) for y in range(0, side, chunk)
            for x in range(0, side, chunk)]


def write_slide(path: Path, side: int, chunk: int, disks: Dict[str, np.ndarray]) -> None:
    """The slide as a zarr array, one chunk in memory at a time."""
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8)
    for area in chunk_areas(side, chunk):
        array[area[0] : area[1], area[2] : area[3]] = paint(disks, area)


def check(labels_path: Path, table_path: Path, side: int, chunk: int, disks: Dict[str, np.ndarray]) -> Dict[str, object]:
    """Every disk one label, whole; nothing else labelled; one table row per label."""
    import zarr

    labels = zarr.open_array(str(labels_path), mode="r")
    pairs, wrong_pixels = set(), 0
    for area in chunk_areas(side, chunk):
        truth = paint(disks, area, ids=True)
        got = labels[area[0] : area[1], area[2] : area[3]]
        wrong_pixels += int(((truth > 0) != (got > 0)).sum())
        inside = truth > 0
        pairs |= set(zip(truth[inside].tolist(), got[inside].tolist()))
    rows = sum(1 for _ in open(table_path)) - 1
    disks_seen, labels_seen = len({t for t, _ in pairs}), len({g for _, g in pairs})
    return {"wrong_pixels": wrong_pixels, "disks_seen": disks_seen, "labels_seen": labels_seen,
            "table_rows": rows, "one_label_per_disk": wrong_pixels == 0 and len(pairs) == disks_seen == labels_seen
            == rows == len(disks["r"])}


class PeakMemory:
    """The process's peak resident memory while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.before = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def run_slide(client, out: Path, side: int, chunk: int, verify: bool) -> Dict[str, object]:
    disks = disk_layout(side)
    started = time.perf_counter()
    write_slide(out / f"disks{side}.zarr", side, chunk, disks)
    painted = time.perf_counter() - started
    with PeakMemory() as memory:
        result = segment_image(client, out / f"disks{side}.zarr", out / "results", PredictorSpec.of(factory=PaintedDisks))
    if result.failed:
        raise RuntimeError(f"{side}²: {result.failed}")
    row: Dict[str, object] = {
        "side": side, "segmenter": "painted-disk components", "disks": len(disks["r"]), "cells": result.cells, "windows": result.blocks,
        "block": result.block, "seconds": round(result.seconds, 2),
        **{f"{stage}_s": round(seconds, 2) for stage, seconds in result.timings.items()},
        "client_peak_rss_mb": round(memory.peak / 2**20, 1), "client_rss_before_mb": round(memory.before / 2**20, 1),
        "paint_s": round(painted, 2)}
    if verify:
        row.update(check(result.labels, result.table, side, chunk, disks))
    return row


def run_model(client, out: Path, side: int, chunk: int) -> Dict[str, object]:
    """The bundled model on a synthetic slide (see the module docstring)."""
    import zarr

    from ancis_fast.data.synthetic import SynthConfig, generate

    sample = generate(7, SynthConfig(size=side, diameter=(14, 22), count=(side * side // 1100,) * 2, p_16bit=1.0,
                                     p_colour=0.0, p_brightfield=0.0))
    path = out / f"synthetic{side}.zarr"
    array = zarr.open_array(str(path), mode="w", shape=sample.image.shape, chunks=(chunk, chunk),
                            dtype=sample.image.dtype)
    array[...] = sample.image
    true_cells = int(sample.labels.max())
    del sample, array
    with PeakMemory() as memory:
        result = segment_image(client, path, out / "results", PredictorSpec.of(dict(backend="eager", zoom=1.0)))
    if result.failed:
        raise RuntimeError(f"model {side}²: {result.failed}")
    return {"side": side, "segmenter": "bundled model", "true_cells": true_cells, "cells": result.cells,
            "windows": result.blocks, "block": result.block, "seconds": round(result.seconds, 2),
            **{f"{stage}_s": round(seconds, 2) for stage, seconds in result.timings.items()},
            "client_peak_rss_mb": round(memory.peak / 2**20, 1), "client_rss_before_mb": round(memory.before / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192,16384", help="comma list of slide sides, px ('' for none)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (one thread each)")
    parser.add_argument("--chunk", type=int, default=2048, help="zarr chunk side, px (windows follow it)")
    parser.add_argument("--no-check", action="store_true", help="skip checking the labels against the disks")
    parser.add_argument("--model-side", type=int, default=0, metavar="N",
                        help="also run the bundled model on an N x N synthetic slide (0: not)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    client = client_for(workers=args.workers)
    rows = []
    try:
        for side in (int(s) for s in args.sizes.split(",") if s):
            rows.append(run_slide(client, args.out, side, args.chunk, not args.no_check))
            print(json.dumps(rows[-1]), flush=True)
        if args.model_side:
            rows.append(run_model(client, args.out, args.model_side, args.chunk))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close_client(client)
    report = {"workers": args.workers, "chunk": args.chunk, "rows": rows,
              "client_max_rss_mb_whole_run": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    (args.out / "slide_scaling.json").write_text(json.dumps(report, indent=1))
    with open(args.out / "slide_scaling.csv", "w", newline="") as table:
        writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
