"""Every CUDA kernel of ``torch.ops.ancis`` on ordinary and edge-case inputs, each compared
with the CPU kernel: the workload for NVIDIA compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/sanitize_ops.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/sanitize_ops.py --small

Inputs are small so that the instrumented run stays short; the edge cases are the ones
where kernels index out of bounds if at all: no boxes, one box, boxes partly or wholly
outside the image, degenerate boxes, more candidates than a block, half precision.
Exits 1 when a CUDA result differs from the CPU one.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ancis_fast import ops
from ancis_fast.models import make_priors

FAILURES = []


def check(name: str, got, expected, atol: float = 0.0) -> None:
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    same = len(got) == len(expected) and all(
        g.shape == e.shape and (torch.equal(g.cpu(), e) if atol == 0 else torch.allclose(g.cpu().float(), e.float(), atol=atol))
        for g, e in zip(got, expected))
    print(f"{'ok  ' if same else 'FAIL'} {name}")
    if not same:
        FAILURES.append(name)


def random_boxes(n: int, extent: float, gen: torch.Generator, outside: bool = False) -> torch.Tensor:
    """``[n, 4]`` (y1, x1, y2, x2), sides 1-40 px; ``outside``: centres up to 20 px beyond the edges."""
    lo, hi = (-20.0, extent + 20.0) if outside else (0.0, extent)
    centre = torch.rand(n, 2, generator=gen) * (hi - lo) + lo
    half = torch.rand(n, 2, generator=gen) * 20 + 0.5
    return torch.cat([centre - half, centre + half], dim=1)


def sanitize_decode_and_detect(gen: torch.Generator, small: bool) -> None:
    size = 128 if small else 256
    priors = make_priors(size, size)
    for batch, shift in ((1, -3.0), (2, -1.0), (1, -20.0)):  # few, many (> pre-NMS cap), no candidates
        locs = torch.randn(batch, priors.shape[0], 4, generator=gen) * 0.5
        conf = torch.randn(batch, priors.shape[0], 2, generator=gen)
        conf[..., 1] += shift
        check(f"decode b={batch}", ops.decode(locs.cuda(), priors.cuda()), ops.decode(locs, priors), atol=1e-5)
        for top_k in (200, None):
            got = ops.detect_padded(locs.cuda(), conf.cuda(), priors.cuda(), pre_nms_top_k=top_k)
            check(f"detect b={batch} shift={shift} top_k={top_k}", got,
                  ops.detect_padded(locs, conf, priors, pre_nms_top_k=top_k), atol=1e-5)
    half = ops.detect_padded(torch.zeros(1, priors.shape[0], 4).half().cuda(),
                             torch.randn(1, priors.shape[0], 2, generator=gen).half().cuda(), priors.cuda())
    print(f"ok   detect fp16 ran ({int(half[3][0])} detections)")


def sanitize_nms(gen: torch.Generator, small: bool) -> None:
    for n in (0, 1, 63, 64, 65, 1000 if small else 5000):
        boxes, scores = random_boxes(n, 500, gen, outside=True), torch.rand(n, generator=gen)
        idxs = torch.randint(0, 3, (n,), generator=gen)
        check(f"nms n={n}", ops.nms(boxes.cuda(), scores.cuda(), 0.5), ops.nms(boxes, scores, 0.5))
        check(f"batched_nms n={n}", ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5),
              ops.batched_nms(boxes, scores, idxs, 0.5))
    boxes, scores = random_boxes(300, 200, gen), torch.rand(300, generator=gen)
    ops.nms(boxes.cuda().half(), scores.cuda().half(), 0.5)
    print("ok   nms fp16 ran")


def sanitize_crop_and_resize(gen: torch.Generator, small: bool) -> None:
    features = torch.randn(2, 8 if small else 32, 40, 56, generator=gen)
    for n in (0, 1, 37):
        boxes = random_boxes(n, 50, gen, outside=True)
        batch_idx = torch.randint(0, 2, (n,), generator=gen)
        for align in (False, True):
            check(f"crop_and_resize float n={n} align={align}",
                  ops.crop_and_resize(features.cuda(), boxes.cuda(), batch_idx.cuda(), (7, 9), align),
                  ops.crop_and_resize(features, boxes, batch_idx, (7, 9), align), atol=1e-5)
        integral = boxes.round().long().clamp(0, 39)
        integral[:, 2:] = torch.maximum(integral[:, 2:], integral[:, :2])
        check(f"crop_and_resize integer n={n}",
              ops.crop_and_resize(features.cuda(), integral.cuda(), batch_idx.cuda(), (16, 16)),
              ops.crop_and_resize(features, integral, batch_idx, (16, 16)), atol=1e-5)
    boxes = random_boxes(5, 50, gen)
    ops.crop_and_resize(features.half().cuda(), boxes.cuda(), torch.zeros(5, dtype=torch.long).cuda(), (5, 5))
    print("ok   crop_and_resize fp16 ran")


def sanitize_paste_masks(gen: torch.Generator, small: bool) -> None:
    for n in (0, 1, 23 if small else 120):
        probs = torch.rand(n, 28, 28, generator=gen)
        boxes = random_boxes(n, 128, gen, outside=True)
        scores = torch.rand(n, generator=gen)
        sizes = torch.randint(0, 29, (n, 2), generator=gen)
        for output in ((128, 128), (200, 90)):
            check(f"paste_masks n={n} out={output}",
                  ops.paste_masks(probs.cuda(), boxes.cuda(), (128, 128), output),
                  ops.paste_masks(probs, boxes, (128, 128), output))
            check(f"paste_masks sized n={n} out={output}",
                  ops.paste_masks(probs.cuda(), boxes.cuda(), (128, 128), output, mask_sizes=sizes.cuda()),
                  ops.paste_masks(probs, boxes, (128, 128), output, mask_sizes=sizes))
            check(f"paste_labels n={n} out={output}",
                  ops.paste_masks(probs.cuda(), boxes.cuda(), (128, 128), output, label_image=True,
                                  scores=scores.cuda()),
                  ops.paste_masks(probs, boxes, (128, 128), output, label_image=True, scores=scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smaller inputs (for the slower racecheck tool)")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and ops._native.has_cuda()):
        print(f"needs a GPU and the CUDA build of ancis_fast._C ({ops._native.reason() or 'no GPU'})", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    for run in (sanitize_decode_and_detect, sanitize_nms, sanitize_crop_and_resize, sanitize_paste_masks):
        run(gen, args.small)
    torch.cuda.synchronize()
    print(f"{len(FAILURES)} mismatch(es)" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
