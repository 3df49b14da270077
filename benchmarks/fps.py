"""End-to-end speed of every backend against the reference, with accuracy beside each number.

    python benchmarks/fps.py --quick
    python benchmarks/fps.py --backends reference,eager,torchscript --batch 1,4 --sizes 512 --out bench_out

Each row runs the whole pipeline (pre-process, detector, detect/NMS, mask stage, paste) on
the same images, times every stage (``perf_counter``, CUDA events/synchronisation on GPU),
and compares the output with the reference path's on those images: detection match rate,
mean mask IoU of matched cells and the AP@0.5 difference (against the synthetic truth).
The reference runs in the same invocation; ``speedup`` is measured, never copied.
See docs/performance.md for every column.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ancis_fast import Instances, Predictor  # noqa: E402
from ancis_fast.pipeline.stages import STAGES  # noqa: E402
from ancis_fast.evaluate import Evaluator, box_iou  # noqa: E402
from ancis_fast.models import build_detector, build_segmenter, default_weights  # noqa: E402

KNOWN_BACKENDS = ("reference", "eager", "torchscript", "compile", "tensorrt")


@dataclass
class Row:
    backend: str
    batch: int
    size: int
    precision: str
    status: str = "ok"
    latency_ms_median: float = math.nan
    latency_ms_p90: float = math.nan
    images_per_s: float = math.nan
    speedup: float = math.nan
    stages_ms: Dict[str, float] = field(default_factory=dict)
    cells_per_image: float = math.nan
    match_rate: float = math.nan
    mask_iou: float = math.nan
    ap50: float = math.nan
    ap50_diff: float = math.nan
    floor_ratio: float = math.nan
    peak_mem_mb: float = math.nan


# ----------------------------------------------------------------------------- machine facts
def hardware_line(device: torch.device) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
             f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts += [f"GPU {torch.cuda.get_device_name(device)}", f"CUDA {torch.version.cuda}"]
    try:
        import tensorrt  # noqa: F401

        parts.append(f"TensorRT {tensorrt.__version__}")
    except ImportError:
        parts.append("TensorRT not installed")
    from ancis_fast import ops

    parts.append("native ops" if ops.native_available() else "native ops missing (torch fallback)")
    return "; ".join(parts)


def detector_gflop(size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_detector().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def dense_conv_gflops(device: torch.device) -> float:
    """Measured fp32 throughput of a large 3x3 convolution: the machine's practical peak."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device).eval()
    x = torch.randn(4, 256, 64, 64, device=device)
    flop = 2 * 256 * 256 * 9 * 64 * 64 * 4
    with torch.no_grad():
        for _ in range(2):
            conv(x)
        _sync(device)
        start, reps = time.perf_counter(), 5
        for _ in range(reps):
            conv(x)
        _sync(device)
    return flop * reps / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


# ----------------------------------------------------------------------------- workloads
def synthetic_images(n: int, size: int, count: Tuple[int, int] = (60, 200), seed: int = 0,
                     diameter: Tuple[float, float] = (16.0, 32.0)):
    from ancis_fast.data.synthetic import SynthConfig, generate

    config = SynthConfig(size=(size, size), diameter=diameter, count=count, p_16bit=0.0)
    samples = [generate((seed, i), config) for i in range(n)]
    return [s.image for s in samples], [s.labels for s in samples]


def folder_images(folder: str, n: int):
    from ancis_fast.io import find_images, read_image

    paths = find_images([folder])[:n]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return [read_image(p) for p in paths], None


def load_models(args) -> Tuple[dict, dict, str]:
    if args.weights_det:
        return (torch.load(args.weights_det, weights_only=True), torch.load(args.weights_seg, weights_only=True),
                f"weights {args.weights_det}, {args.weights_seg}")
    try:
        det, seg = default_weights()
        return torch.load(det, weights_only=True), torch.load(seg, weights_only=True), "bundled default model"
    except FileNotFoundError:
        torch.manual_seed(0)
        return (build_detector().state_dict(), build_segmenter().state_dict(),
                "seeded random weights (no bundled model): cell counts are not realistic")


# ----------------------------------------------------------------------------- staged runs
class Timer:
    """``Predictor.stage_timer`` that sums each stage's milliseconds: CUDA events on a GPU
    (the stage's own stream time, synchronised at its end), ``perf_counter`` on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.stages = device, {s: 0.0 for s in STAGES}

    def __call__(self, stage: str, fn, *args):
        if self.device.type == "cuda":
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
            out = fn(*args)
            end_event.record()
            end_event.synchronize()
            self.stages[stage] += start_event.elapsed_time(end_event)
            return out
        start = time.perf_counter()
        out = fn(*args)
        self.stages[stage] += (time.perf_counter() - start) * 1000
        return out


def run_reference(p: Predictor, images: Sequence[np.ndarray], timer: Timer) -> List[Instances]:
    """The release's flow: one image at a time, each stage timed by the Predictor itself."""
    p.stage_timer = timer
    return [p.predict(image) for image in images]


def run_fast(p: Predictor, images: Sequence[np.ndarray], timer: Timer) -> List[Instances]:
    """All images as one batch through the fast pipeline, each stage timed by the Predictor."""
    p.stage_timer = timer
    return p.predict_batch(list(images), batch_size=len(images))


# ----------------------------------------------------------------------------- accuracy
def agreement(ref: List[Instances], got: List[Instances]) -> Tuple[float, float]:
    """Share of reference cells with a box of IoU >= 0.9 in ``got``, and the mean mask IoU
    of those pairs."""
    matched, total, ious = 0, 0, []
    for a, b in zip(ref, got):
        total += len(a)
        if not len(a) or not len(b):
            continue
        overlap = box_iou(a.boxes, b.boxes)
        best = overlap.argmax(axis=1)
        for i, j in enumerate(best):
            if overlap[i, j] >= 0.9:
                matched += 1
                ma, mb = a.mask_patches.mask(i), b.mask_patches.mask(int(j))
                union = (ma | mb).sum()
                ious.append((ma & mb).sum() / union if union else 1.0)
    return (matched / total if total else math.nan), (float(np.mean(ious)) if ious else math.nan)


def ap50(results: List[Instances], truths) -> float:
    if truths is None:
        return math.nan
    ev = Evaluator()
    for inst, gt in zip(results, truths):
        ev.add_masks(inst.masks, inst.scores, gt)
    return ev.summary()["ap50"]


# ----------------------------------------------------------------------------- one row
def measure(p: Predictor, images, warmup: int, iters: int, device: torch.device):
    runner = run_reference if p.backend == "reference" else run_fast
    for _ in range(warmup):
        runner(p, images, Timer(device))
    latencies, stage_sums, outputs = [], {s: 0.0 for s in STAGES}, None
    for _ in range(iters):
        timer = Timer(device)
        outputs = runner(p, images, timer)
        latencies.append(sum(timer.stages.values()))
        for s in STAGES:
            stage_sums[s] += timer.stages[s] / iters
    return np.array(latencies), stage_sums, outputs


def make_predictor(backend: str, det: dict, seg: dict, size: int, device: torch.device, precision: str,
                   zoom="auto") -> Predictor:
    """The Predictor's own errors (no GPU, no TensorRT, fp16 on a CPU) become the row's status."""
    return Predictor(det, seg, backend=backend, device=str(device), input_size=(size, size), precision=precision,
                     zoom=zoom)


def skip_reason(exc: Exception) -> str:
    """The first clause of an error (up to its first "; "): whole words, never cut mid-sentence."""
    return str(exc).split("; ")[0].strip() or type(exc).__name__


def table(rows: List[Row]) -> str:
    head = ("| backend | batch | size | prec | status | ms/batch (p50) | p90 | img/s | speedup | " +
            " | ".join(f"{s} ms" for s in STAGES) + " | cells/img | match | mask IoU | AP50 | ΔAP50 | det/floor | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, f="{:.1f}": "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)  # noqa: E731
    for r in rows:
        stages = " | ".join(fmt(r.stages_ms.get(s)) for s in STAGES)
        lines.append(f"| {r.backend} | {r.batch} | {r.size} | {r.precision} | {r.status} | {fmt(r.latency_ms_median)} | "
                     f"{fmt(r.latency_ms_p90)} | {fmt(r.images_per_s, '{:.2f}')} | {fmt(r.speedup, '{:.2f}x')} | {stages} | "
                     f"{fmt(r.cells_per_image)} | {fmt(r.match_rate, '{:.3f}')} | {fmt(r.mask_iou, '{:.3f}')} | "
                     f"{fmt(r.ap50, '{:.3f}')} | {fmt(r.ap50_diff, '{:+.3f}')} | {fmt(r.floor_ratio, '{:.2f}')} | "
                     f"{fmt(r.peak_mem_mb, '{:.0f}')} |")
    return "\n".join(lines)


def run_grid(args, device, det, seg) -> List[Row]:
    rows: List[Row] = []
    conv_gflops = dense_conv_gflops(device) if device.type == "cpu" else math.nan
    for size in args.sizes:
        floor_ms = detector_gflop(size) / conv_gflops * 1000 if device.type == "cpu" else math.nan
        n_images = max(args.batch)
        images, truths = (folder_images(args.images, n_images) if args.images != "synthetic"
                          else synthetic_images(n_images, size))
        reference_cache: Dict[int, Tuple[float, List[Instances]]] = {}
        for backend in ["reference"] + [b for b in args.backends if b != "reference"]:
            for batch in args.batch:
                for precision in (["fp32"] if backend == "reference" else args.precision):
                    row = Row(backend, batch, size, precision)
                    rows.append(row) if backend in args.backends or backend == "reference" else None
                    try:
                        p = make_predictor(backend, det, seg, size, device, precision)
                        lat, stages, outputs = measure(p, images[:batch], args.warmup, args.iters, device)
                    except Exception as exc:  # a backend that cannot run here gets a row saying why
                        row.status = f"skipped: {skip_reason(exc)}"
                        continue
                    row.latency_ms_median, row.latency_ms_p90 = float(np.median(lat)), float(np.percentile(lat, 90))
                    row.images_per_s = batch / (row.latency_ms_median / 1000)
                    row.stages_ms = stages
                    row.cells_per_image = float(np.mean([len(o) for o in outputs]))
                    row.floor_ratio = stages["detector"] / batch / floor_ms if floor_ms == floor_ms else math.nan
                    row.peak_mem_mb = peak_memory_mb(device)
                    row.ap50 = ap50(outputs, truths[:batch] if truths else None)
                    if backend == "reference" and precision == "fp32":
                        reference_cache[batch] = (row.latency_ms_median, outputs)
                    if batch in reference_cache:
                        ref_latency, ref_outputs = reference_cache[batch]
                        row.speedup = ref_latency / row.latency_ms_median
                        row.match_rate, row.mask_iou = agreement(ref_outputs, outputs)
                        ref_ap = ap50(ref_outputs, truths[:batch] if truths else None)
                        row.ap50_diff = row.ap50 - ref_ap
                    print(f"  {backend} batch {batch} size {size} {precision}: {row.latency_ms_median:.0f} ms", file=sys.stderr)
    return rows


def sweep(args, device, det, seg, backend: str) -> Dict[str, list]:
    """Cost against the number of cells and against image size (tiled above the input).

    Only the number of cells changes along the cells sweep: nuclei of one size (16 px, so
    that 700 fit in 512²), zoom 1 (``zoom="auto"`` would segment crowded images a second
    time, enlarged: a 5-6x step, not a trend), the fastest of three timings (the one least
    disturbed by other processes). Points are plotted against the cells found (the
    generator places fewer where they do not fit)."""
    p = make_predictor(backend, det, seg, 512, device, "fp32", zoom=1)
    cells, sizes = ([10, 100, 400], [256, 512, 1024]) if args.quick else ([10, 50, 100, 200, 400, 700],
                                                                           [256, 512, 1024, 2048])
    out: Dict[str, list] = {"cells": [], "sizes": []}

    def timed(image, **kwargs) -> Tuple[Instances, float]:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            inst = p.predict(image, **kwargs)
            times.append((time.perf_counter() - start) * 1000)
        return inst, min(times)

    p.predict(synthetic_images(1, 512)[0][0])  # warm-up
    for n in cells:
        images, _ = synthetic_images(1, 512, count=(n, n), seed=n, diameter=(16.0, 16.0))
        inst, ms = timed(images[0])
        out["cells"].append({"requested": n, "found": len(inst), "ms": ms})
    for size in sizes:
        images, _ = synthetic_images(1, size, count=(size * size // 2500, size * size // 2500), seed=size)
        inst, ms = timed(images[0], tile=512 if size > 512 else None)
        out["sizes"].append({"size": size, "found": len(inst), "ms": ms})
    out["cells"].sort(key=lambda d: d["found"])
    return out


def plot(sweeps: Dict[str, list], out_dir: Path, backend: str) -> List[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    paths = []
    for key, x_key, x_label in (("cells", "found", "cells found"), ("sizes", "size", "image side (px, tiled > 512)")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([d[x_key] for d in sweeps[key]], [d["ms"] for d in sweeps[key]], "o-")
        ax.set_xlabel(x_label)
        ax.set_ylabel("ms per image")
        ax.set_title(f"{backend}, zoom 1: cost vs {key} (fastest of 3)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"sweep_{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    split = lambda t: [s for s in t.split(",") if s]  # noqa: E731
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", type=split, default=["reference", "eager", "torchscript", "tensorrt"],
                        help="comma list of reference,eager,torchscript,compile,tensorrt (default: all but compile, "
                             "whose first images compile for minutes on a CPU); one that cannot run gets a row saying why")
    parser.add_argument("--batch", type=lambda t: [int(v) for v in split(t)], default=[1])
    parser.add_argument("--sizes", type=lambda t: [int(v) for v in split(t)], default=[512])
    parser.add_argument("--precision", type=split, default=["fp32"])
    parser.add_argument("--images", default="synthetic", help="a folder of images, or synthetic (default)")
    parser.add_argument("--weights-det")
    parser.add_argument("--weights-seg")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true", help="skip the cells/size sweeps")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--quick", action="store_true", help="small grid, 2 iterations (< 5 min on 2 CPU cores)")
    args = parser.parse_args(argv)
    unknown = set(args.backends) - set(KNOWN_BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; choose from {KNOWN_BACKENDS}")
    if args.quick:
        args.iters, args.warmup, args.batch, args.sizes = 2, 1, [1], [512]
    device = torch.device(args.device)
    det, seg, weights_note = load_models(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"{hardware_line(device)}\nmodel: {weights_note}\ncommand: python benchmarks/fps.py {' '.join(argv or sys.argv[1:])}"
    print(header, file=sys.stderr)
    rows = run_grid(args, device, det, seg)
    fast = next((b for b in args.backends if b in ("eager", "torchscript")), None)
    sweeps = {} if args.no_sweep or fast is None else sweep(args, device, det, seg, fast)
    plots = plot(sweeps, out_dir, fast) if sweeps else []
    markdown = f"{header}\n\n{table(rows)}\n"
    print(markdown)
    (out_dir / "results.md").write_text(markdown)
    (out_dir / "results.json").write_text(json.dumps({"hardware": hardware_line(device), "model": weights_note,
                                                      "rows": [asdict(r) for r in rows], "sweeps": sweeps,
                                                      "plots": [str(p) for p in plots]}, indent=1))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        flat = [{**{k: v for k, v in asdict(r).items() if k != "stages_ms"},
                 **{f"{s}_ms": r.stages_ms.get(s, math.nan) for s in STAGES}} for r in rows]
        writer.writerow(flat[0].keys())
        writer.writerows([list(d.values()) for d in flat])
    no_plots = ("--no-sweep" if args.no_sweep else "the sweeps need eager or torchscript in --backends"
                if fast is None else "matplotlib missing: pip install .[bench]")
    print(written_message(out_dir, plots, no_plots), file=sys.stderr)
    return 0


def written_message(out_dir: Path, plots: List[Path], no_plots: str) -> str:
    """Where the results and ``plots`` went, or why there are none (``no_plots``): the run's
    last lines."""
    results = ", ".join(str(out_dir / name) for name in ("results.md", "results.json", "results.csv"))
    return f"results: {results}\nplots: {', '.join(str(p) for p in plots) if plots else f'none ({no_plots})'}"


if __name__ == "__main__":
    sys.exit(main())
