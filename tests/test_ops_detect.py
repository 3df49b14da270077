"""ancis_fast.ops.detect: identical to reference.detect + reference.detections_of_image
(native and fallback), quirks included; fixed-shape padded outputs; tracing."""
from __future__ import annotations

from typing import List, Tuple

import pytest
import torch

from ancis_fast import ops
from ancis_fast.backends.torchscript import script
from ancis_fast.models import make_priors
from ancis_fast.ops.detect import detect_torch
from ancis_fast.pipeline import reference

needs_native = pytest.mark.skipif(not ops.native_available(),
                                  reason=f"native ops not built: {ops._native.reason()}")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and ops._native.has_cuda()),
                                reason="needs a CUDA GPU and the CUDA build of ancis_fast._C")


def _inputs(batch: int, size: int, seed: int, shift: float = -2.0, scale: float = 2.0, num_classes: int = 2,
            quantise: bool = False):
    """Random detector outputs; `shift` moves the cell logits (fewer candidates when lower),
    `quantise` snaps logits and offsets to a coarse grid so that scores and boxes tie."""
    g = torch.Generator().manual_seed(seed)
    priors = make_priors(size, size)
    locs = torch.randn(batch, priors.shape[0], 4, generator=g) * 0.5
    conf = torch.randn(batch, priors.shape[0], num_classes, generator=g) * scale
    conf[..., 1:] += shift
    if quantise:
        conf = torch.round(conf * 2) / 2
        locs = torch.round(locs * 4) / 4
    return locs, conf, priors


def _reference(locs, conf, priors, conf_thresh=0.3, nms_thresh=0.3, pre_nms_top_k=200, max_det=500):
    out = reference.detect(locs, conf, priors, conf_thresh, nms_thresh, top_k=max_det, pre_nms_top_k=pre_nms_top_k)
    return [reference.detections_of_image(out[b]) for b in range(out.shape[0])]


def _assert_identical(got: List[Tuple[torch.Tensor, ...]], expected: List[Tuple[torch.Tensor, ...]]):
    assert len(got) == len(expected)
    for (gb, gs, gl), (eb, es, el) in zip(got, expected):
        assert gs.shape == es.shape, (gs.shape, es.shape)
        assert torch.equal(gb, eb)
        assert torch.equal(gs, es)
        assert torch.equal(gl, el)


def _padded_to_list(padded):
    boxes, scores, labels, counts = padded
    return [(boxes[b, :n], scores[b, :n], labels[b, :n]) for b, n in enumerate(counts.tolist())]


CASES = [
    # batch, size, seed, shift, scale, classes, quantise, pre_nms_top_k
    (1, 512, 0, -4.0, 1.0, 2, False, 200),     # full 24,448 priors, a few hundred candidates
    (2, 128, 1, 0.0, 2.0, 2, False, 200),      # most priors are candidates: the cap bites
    (3, 128, 2, -2.0, 2.0, 2, True, 200),      # ties in scores and identical boxes
    (2, 128, 3, 0.0, 2.0, 2, False, None),     # no cap: greedy NMS over everything
    (2, 64, 4, -1.0, 2.0, 3, False, 200),      # three classes: per-class NMS + stable merge
    (1, 64, 5, -1.0, 2.0, 4, True, None),      # four classes with ties across classes
]


@pytest.mark.parametrize("batch,size,seed,shift,scale,classes,quantise,top_k", CASES)
def test_detect_identical_to_reference(batch, size, seed, shift, scale, classes, quantise, top_k):
    locs, conf, priors = _inputs(batch, size, seed, shift, scale, classes, quantise)
    expected = _reference(locs, conf, priors, pre_nms_top_k=top_k)
    _assert_identical(ops.detect(locs, conf, priors, pre_nms_top_k=top_k), expected)
    _assert_identical(_padded_to_list(detect_torch(locs, conf, priors, pre_nms_top_k=top_k)), expected)


@pytest.mark.parametrize("conf_thresh,nms_thresh,max_det", [(0.05, 0.5, 500), (0.9, 0.3, 500), (0.3, 0.3, 7),
                                                            (-1.0, 0.45, 50), (0.3, 0.0, 500), (0.3, 1.0, 30)])
def test_detect_thresholds_and_caps(conf_thresh, nms_thresh, max_det):
    locs, conf, priors = _inputs(2, 64, 11, shift=-1.0)
    expected = _reference(locs, conf, priors, conf_thresh, nms_thresh, max_det=max_det)
    got = ops.detect(locs, conf, priors, conf_thresh, nms_thresh, max_det=max_det)
    _assert_identical(got, expected)
    _assert_identical(_padded_to_list(detect_torch(locs, conf, priors, conf_thresh, nms_thresh, 200, max_det)),
                      expected)


def test_detect_threshold_is_strict():
    # Logits (0, log(3/7)) give exactly softmax 0.3 for a cell... up to float rounding: take
    # the computed score itself as the threshold, which must then reject that prior.
    locs, conf, priors = _inputs(1, 64, 12, shift=-1.0)
    score = torch.softmax(conf, -1)[0, 17, 1].item()
    conf[0, :, :] = conf[0, 17, :]  # every prior has that exact score
    assert sum(len(s) for _, s, _ in ops.detect(locs, conf, priors, conf_thresh=score)) == 0
    assert len(ops.detect(locs, conf, priors, conf_thresh=score - 1e-6)[0][1]) > 0


@pytest.mark.parametrize("top_k", [200, None])
def test_detect_non_finite_inputs_like_reference(top_k):
    locs, conf, priors = _inputs(2, 128, 23, shift=0.0)
    locs[0, ::7, 2] = 500.0            # exp overflow: infinite heights
    locs[0, ::11, 0] = float("nan")    # NaN boxes never suppress nor get suppressed
    locs[1, ::5, 3] = -500.0           # zero widths
    conf[1, ::13, 1] = float("nan")    # NaN scores are never candidates
    conf[1, ::17, 0] = float("inf")
    expected = _reference(locs, conf, priors, pre_nms_top_k=top_k)

    def nan_safe(results):
        return [tuple(torch.nan_to_num(t, nan=-9.0) if t.is_floating_point() else t for t in r) for r in results]

    _assert_identical(nan_safe(ops.detect(locs, conf, priors, pre_nms_top_k=top_k)), nan_safe(expected))
    _assert_identical(nan_safe(_padded_to_list(detect_torch(locs, conf, priors, pre_nms_top_k=top_k))),
                      nan_safe(expected))


def test_detect_ties_keep_lower_prior_first():
    # All priors share one score: the 200-candidate cap must take the first 200 priors.
    locs, conf, priors = _inputs(1, 128, 13)
    conf[:] = torch.tensor([0.0, 1.0])
    boxes, scores, labels = ops.detect(locs, conf, priors, nms_thresh=1.0)[0]
    assert scores.numel() == 200
    from ancis_fast.boxes import decode
    assert torch.equal(boxes, decode(locs[0, :200], priors[:200]))
    _assert_identical(ops.detect(locs, conf, priors), _reference(locs, conf, priors))


def test_detect_no_candidates_and_empty_batch():
    locs, conf, priors = _inputs(2, 64, 14, shift=-30.0)
    assert [len(s) for _, s, _ in ops.detect(locs, conf, priors)] == [0, 0]
    boxes, scores, labels, counts = ops.detect_padded(locs[:0], conf[:0], priors)
    assert boxes.shape == (0, 500, 4) and counts.shape == (0,)
    # One class only (background): nothing to detect.
    boxes, scores, labels, counts = ops.detect_padded(locs, conf[..., :1].contiguous(), priors)
    assert boxes.shape == (2, 0, 4) and counts.tolist() == [0, 0]


def test_detect_single_prior():
    priors = torch.tensor([[32.0, 32.0, 10.0, 10.0]])
    locs = torch.zeros(1, 1, 4)
    conf = torch.tensor([[[0.0, 2.0]]])
    boxes, scores, labels = ops.detect(locs, conf, priors)[0]
    assert boxes.tolist() == [[27.0, 27.0, 37.0, 37.0]]
    assert scores.tolist() == [torch.softmax(conf[0, 0], -1)[1].item()]
    assert labels.tolist() == [1]


def test_detect_padded_layout():
    locs, conf, priors = _inputs(2, 64, 15, shift=-1.0)
    boxes, scores, labels, counts = ops.detect_padded(locs, conf, priors, max_det=40)
    assert boxes.shape == (2, 40, 4) and scores.shape == (2, 40) and labels.dtype == torch.long
    for b, n in enumerate(counts.tolist()):
        assert torch.all(scores[b, n:] == 0) and torch.all(boxes[b, n:] == 0) and torch.all(labels[b, n:] == 0)
        assert torch.all(scores[b, :n] > 0)


def test_detect_float64():
    locs, conf, priors = _inputs(2, 64, 16, shift=-1.0)
    locs, conf, priors = locs.double(), conf.double(), priors.double()
    _assert_identical(ops.detect(locs, conf, priors), _reference(locs, conf, priors))


@pytest.mark.parametrize("kwargs,match", [
    (dict(locs=torch.zeros(1, 5, 3)), "locs must have shape"),
    (dict(conf=torch.zeros(1, 4, 2)), "conf_logits must have shape"),
    (dict(conf=torch.zeros(1, 5, 2, dtype=torch.float64)), "conf_logits dtype"),
    (dict(priors=torch.zeros(4, 4)), "priors must have shape"),
    (dict(max_det=-1), "max_det"),
    (dict(pre_nms_top_k=-5), "pre_nms_top_k"),
])
def test_detect_bad_inputs(kwargs, match):
    args = dict(locs=torch.zeros(1, 5, 4), conf=torch.zeros(1, 5, 2), priors=torch.ones(5, 4))
    extra = {k: kwargs.pop(k) for k in ("max_det", "pre_nms_top_k") if k in kwargs}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.detect(args["locs"], args["conf"], args["priors"], **extra)


@needs_native
def test_detect_opcheck():
    locs, conf, priors = _inputs(2, 64, 17, shift=-1.0)
    torch.library.opcheck(torch.ops.ancis.detect.default, (locs, conf, priors, 0.3, 0.3, 200, 500, [0.1, 0.2]))
    torch.library.opcheck(torch.ops.ancis.detect.default, (locs, conf, priors, 0.3, 0.3, None, 50, [0.1, 0.2]))


@needs_native
def test_detect_torchscript():
    scripted = script(_scripted_detect)
    locs, conf, priors = _inputs(2, 64, 18, shift=-1.0)
    _assert_identical(_padded_to_list(scripted(locs, conf, priors)), _reference(locs, conf, priors))


def _scripted_detect(locs: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor):
    return torch.ops.ancis.detect(locs, conf, priors, 0.3, 0.3, 200, 500, [0.1, 0.2])


class _DetectModule(torch.nn.Module):
    def __init__(self, priors: torch.Tensor):
        super().__init__()
        self.register_buffer("priors", priors)

    def forward(self, locs: torch.Tensor, conf: torch.Tensor):
        return ops.detect_padded(locs, conf, self.priors)


@needs_native
def test_detect_export_and_compile_trace_through():
    locs, conf, priors = _inputs(2, 64, 19, shift=-1.0)
    module = _DetectModule(priors)
    expected = _reference(locs, conf, priors)
    exported = torch.export.export(module, (locs, conf))
    assert any("ancis.detect" in str(node.target) for node in exported.graph.nodes)
    _assert_identical(_padded_to_list(exported.module()(locs, conf)), expected)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    _assert_identical(_padded_to_list(compiled(locs, conf)), expected)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("top_k", [200, None])
@pytest.mark.parametrize("classes", [2, 3])
def test_detect_cuda_identical_to_reference_on_cuda(top_k, classes):
    locs, conf, priors = _inputs(2, 512, 20, shift=-3.0, num_classes=classes)
    locs, conf, priors = locs.cuda(), conf.cuda(), priors.cuda()
    expected = [tuple(t.cuda() for t in r) for r in _reference(locs, conf, priors, pre_nms_top_k=top_k)]
    _assert_identical(ops.detect(locs, conf, priors, pre_nms_top_k=top_k), expected)


@needs_cuda
@pytest.mark.cuda
def test_detect_cuda_float16_close_to_float32():
    locs, conf, priors = _inputs(1, 512, 21, shift=-4.0, scale=1.0)
    locs, conf, priors = locs.cuda(), conf.cuda(), priors.cuda()
    full = ops.detect(locs, conf, priors)[0]
    half = ops.detect(locs.half(), conf.half(), priors)[0]
    assert half[0].dtype == torch.float16
    assert abs(len(half[1]) - len(full[1])) <= max(3, len(full[1]) // 20)


@needs_native
def test_detect_inductor_compile():
    """Inductor compiles the module around the op (about 7 s here, cold cache)."""
    locs, conf, priors = _inputs(2, 64, 22, shift=-1.0)
    compiled = torch.compile(_DetectModule(priors), fullgraph=True)
    _assert_identical(_padded_to_list(compiled(locs, conf)), _reference(locs, conf, priors))
