"""Mask-stage cost on realistic boxes: the ground-truth boxes of a synthetic 512² image with
~120 nuclei of ~24 px (random network weights: the cost does not depend on them).

    python benchmarks/bench_mask_stage.py
"""
import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests"))
import torch
from conftest import random_models
from ancis_fast.data.sample import boxes_from_labels
from ancis_fast.data.synthetic import generate, SynthConfig
from ancis_fast.pipeline import reference
from ancis_fast.pipeline.fast import FastPipeline, Detections
from ancis_fast.pipeline.preprocess import preprocess
s = generate((7, 0), SynthConfig(size=(512, 512), diameter=(18, 30), count=(80, 140), p_16bit=0, p_colour=0, p_brightfield=0))
out = boxes_from_labels(s.labels)
gt = torch.as_tensor(out[0] if isinstance(out, tuple) else out, dtype=torch.float32)
print("boxes", gt.shape, "mean size", (gt[:, 2:] - gt[:, :2]).mean(0).tolist())
det, seg = random_models()
x, orig = preprocess(s.image, (512, 512))
def t(f, n=2):
    f(); best = 1e9
    for _ in range(n):
        a = time.perf_counter(); f(); best = min(best, time.perf_counter() - a)
    return best
with torch.inference_mode():
    locs, conf, feats = det(x)
    print("reference detector s", t(lambda: det(x), 1))
    def ref_mask():
        f = [seg.encode_c0(feats[0])] + list(feats[1:])
        return reference.segment(seg, f, gt)
    print("reference mask stage s", t(ref_mask, 1))
    for mode in ("exact", "fast"):
        fp = FastPipeline(det, seg, (512, 512), mode=mode)
        xc = x.contiguous(memory_format=torch.channels_last)
        _, _, ff = fp.detector(xc)
        d = Detections(gt, torch.ones(len(gt)), torch.ones(len(gt), dtype=torch.long), torch.zeros(len(gt), dtype=torch.long))
        print(mode, "fast detector s", t(lambda: fp.detector(xc), 1), "mask stage s", t(lambda: fp.segment(xc, ff, d)),
              "paste s", t(lambda: fp.paste(d, *fp.segment(xc, ff, d), orig, 0.5), 1))
