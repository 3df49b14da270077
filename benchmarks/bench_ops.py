"""Micro-benchmarks of the native operators against their alternatives (pytest-benchmark).

Not part of the test suite (pytest's testpaths is tests/). Run:

    python benchmarks/bench_ops.py                      # CPU, prints a markdown table
    python benchmarks/bench_ops.py --threads 1          # one intra-op thread
    python benchmarks/bench_ops.py --device cuda        # on a GPU
    pytest benchmarks/bench_ops.py --benchmark-only     # plain pytest-benchmark output

Every pair runs on the same inputs and the benchmark first asserts that both sides give the
same result (identical keep for NMS, identical crops for roi_align, identical detections
for the reference Detect).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Dict, List

import pytest
import torch
import torchvision

from ancis_fast import ops
from ancis_fast.boxes import decode as decode_reference
from ancis_fast.boxes import yxyx_to_xyxy
from ancis_fast.models import make_priors
from ancis_fast.ops.detect import detect_torch
from ancis_fast.pipeline import reference

DEVICE = torch.device(os.environ.get("ANCIS_BENCH_DEVICE", "cpu"))


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(benchmark, fn, rounds: int = 0):
    def run():
        out = fn()
        _sync()
        return out

    if rounds:
        return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark(run)


# --- detect ---------------------------------------------------------------------------
def _detector_outputs(seed: int = 0):
    """A 512 x 512 input's 24,448 priors; logits such that ~1.5 % of the priors are cell
    candidates (~370, a crowded microscopy image) and boxes jitter around the priors."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors(512, 512)
    locs = torch.randn(1, priors.shape[0], 4, generator=g) * 0.5
    conf = torch.randn(1, priors.shape[0], 2, generator=g)
    conf[..., 1] -= 4.0
    return locs.to(DEVICE), conf.to(DEVICE), priors.to(DEVICE)


def _reference_detect(locs, conf, priors):
    return reference.detections_of_image(reference.detect(locs, conf, priors)[0])


@pytest.mark.benchmark(group="detect 24,448 priors")
@pytest.mark.parametrize("impl", ["ancis native", "torch fallback", "reference Detect"])
def test_detect(benchmark, impl):
    locs, conf, priors = _detector_outputs()
    expected = _reference_detect(locs, conf, priors)
    fn = {
        "ancis native": lambda: ops.detect(locs, conf, priors)[0],
        "torch fallback": lambda: detect_torch(locs, conf, priors),
        "reference Detect": lambda: _reference_detect(locs, conf, priors),
    }[impl]
    if impl == "ancis native":
        assert all(torch.equal(a, b) for a, b in zip(fn(), expected))
    _timed(benchmark, fn)


@pytest.mark.benchmark(group="decode 24,448 priors")
@pytest.mark.parametrize("impl", ["ancis native", "boxes.decode (torch)"])
def test_decode(benchmark, impl):
    locs, _, priors = _detector_outputs()
    fn = (lambda: ops.decode(locs, priors)) if impl == "ancis native" else (lambda: decode_reference(locs, priors))
    assert torch.equal(fn(), decode_reference(locs, priors))
    _timed(benchmark, fn)


# --- nms --------------------------------------------------------------------------------
def _boxes(n: int, seed: int = 0):
    """Cells: centres uniform on a 1000 x 1000 image, sides 10-60 px, random scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 1000
    size = torch.rand(n, 2, generator=g) * 50 + 10
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    return boxes.to(DEVICE), torch.rand(n, generator=g).to(DEVICE)


@pytest.mark.benchmark(group="nms")
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl", ["ancis native", "torchvision"])
def test_nms(benchmark, impl, n):
    boxes, scores = _boxes(n)
    xyxy = yxyx_to_xyxy(boxes).contiguous()
    ours = lambda: ops.nms(boxes, scores, 0.5)  # noqa: E731
    theirs = lambda: torchvision.ops.nms(xyxy, scores, 0.5)  # noqa: E731
    assert torch.equal(ours(), theirs())
    slow = impl == "torchvision" and n >= 20000 and DEVICE.type == "cpu"
    _timed(benchmark, ours if impl == "ancis native" else theirs, rounds=3 if slow else 0)


@pytest.mark.benchmark(group="batched_nms")
@pytest.mark.parametrize("n", [1000, 5000, 20000])
@pytest.mark.parametrize("impl", ["ancis native", "torchvision"])
def test_batched_nms(benchmark, impl, n):
    boxes, scores = _boxes(n, seed=1)
    idxs = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    xyxy = yxyx_to_xyxy(boxes).contiguous()
    ours = lambda: ops.batched_nms(boxes, scores, idxs, 0.5)  # noqa: E731
    theirs = lambda: torchvision.ops.batched_nms(xyxy, scores, idxs, 0.5)  # noqa: E731
    assert sorted(ours().tolist()) == sorted(theirs().tolist())
    slow = impl == "torchvision" and n >= 20000 and DEVICE.type == "cpu"
    _timed(benchmark, ours if impl == "ancis native" else theirs, rounds=3 if slow else 0)


# --- crop_and_resize -----------------------------------------------------------------------
def _crop_inputs(k: int, seed: int = 0):
    """A stride-4 feature map of a 512 x 512 input (c2: 256 x 128 x 128), cell boxes of
    3-24 feature pixels, 14 x 14 crops."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 256, 128, 128, generator=g)
    lo = torch.rand(k, 2, generator=g) * 110
    boxes = torch.cat([lo, lo + torch.rand(k, 2, generator=g) * 21 + 3], dim=1)
    return features.to(DEVICE), boxes.to(DEVICE), torch.zeros(k, dtype=torch.long, device=DEVICE)


@pytest.mark.benchmark(group="crop_and_resize 256ch 14x14")
@pytest.mark.parametrize("k", [100, 1000])
@pytest.mark.parametrize("impl", ["ancis native", "torchvision roi_align"])
def test_crop_and_resize(benchmark, impl, k):
    features, boxes, batch_idx = _crop_inputs(k)
    rois = torch.cat([batch_idx[:, None].float(), yxyx_to_xyxy(boxes)], dim=1)
    ours = lambda: ops.crop_and_resize(features, boxes, batch_idx, (14, 14))  # noqa: E731
    theirs = lambda: torchvision.ops.roi_align(features, rois, (14, 14), 1.0, 1, True)  # noqa: E731
    if DEVICE.type == "cpu":
        assert torch.equal(ours(), theirs())
    else:  # each GPU kernel rounds its sample positions its own way (FMA contraction): ~4e-5 seen
        torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=2e-4)
    _timed(benchmark, ours if impl == "ancis native" else theirs, rounds=5 if k >= 1000 else 0)


# --- paste_masks ---------------------------------------------------------------------------
@pytest.mark.benchmark(group="paste 200 masks 512->1000x1000")
@pytest.mark.parametrize("impl", ["ancis native", "ancis native, label image", "reference paste_mask loop"])
def test_paste_masks(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(200, 2, generator=g) * 480
    boxes = torch.cat([lo, lo + torch.rand(200, 2, generator=g) * 25 + 6], dim=1)
    probs = torch.rand(200, 28, 28, generator=g)
    fn = {
        "ancis native": lambda: ops.paste_masks(probs, boxes, (512, 512), (1000, 1000)),
        "ancis native, label image": lambda: ops.paste_masks(probs, boxes, (512, 512), (1000, 1000),
                                                             label_image=True),
        "reference paste_mask loop": lambda: [reference.paste_mask(probs[k].numpy(), boxes[k], (512, 512), (1000, 1000))
                                              for k in range(200)],
    }[impl]
    _timed(benchmark, fn, rounds=5)


# --- table ------------------------------------------------------------------------------
def _table(results: Dict) -> str:
    rows: List[str] = ["| group | case | implementation | median | min | vs. alternative |",
                       "|---|---|---|---:|---:|---:|"]
    by_case: Dict = {}
    for bench in results["benchmarks"]:
        params = dict(bench.get("params") or {})
        impl = params.pop("impl", bench["name"])
        case = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
        by_case.setdefault((bench["group"], case), []).append((impl, bench["stats"]))
    for (group, case), entries in by_case.items():
        native = [s for impl, s in entries if impl == "ancis native"]
        for impl, stats in entries:
            ratio = ""
            if native and not impl.startswith("ancis native"):
                ratio = f"native {stats['median'] / native[0]['median']:.1f}x faster"
            rows.append(f"| {group} | {case} | {impl} | {_fmt(stats['median'])} | {_fmt(stats['min'])} | {ratio} |")
    return "\n".join(rows)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=".benchmarks/bench_ops.json")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args, rest = parser.parse_known_args()
    os.environ["ANCIS_BENCH_DEVICE"] = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = [__file__, "--benchmark-only", f"--benchmark-json={args.json}", "-q", "-p", "no:cacheprovider",
            "--benchmark-columns=min,median,rounds"] + (["-k", args.k] if args.k else []) + rest
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    code = pytest.main(argv)
    with open(args.json) as f:
        results = json.load(f)
    cpu = results.get("machine_info", {}).get("cpu", {}).get("brand_raw", platform.processor())
    print(f"\nmachine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), native={ops.native_available()}, device={args.device}\n")
    print(_table(results))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
