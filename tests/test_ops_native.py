"""Loading of the native library: import never fails, the fallback warns once, every
operator's fallback gives the native result."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from ancis_fast import ops
from ancis_fast.ops import _native


def test_native_available_is_a_bool_with_a_reason():
    assert isinstance(ops.native_available(), bool)
    assert (_native.reason() == "") == ops.native_available()


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_missing_library_falls_back_and_warns_once():
    out = _run("""
        import importlib.util, warnings
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "ancis_fast._C" else real_find_spec(name, *a)
        import torch
        from ancis_fast import ops
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 1.0, 10.0, 11.0]])
            keep = ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
            ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
            ops.decode(torch.zeros(1, 2, 4), torch.ones(2, 4))
        print(ops.native_available(), keep.tolist(), len(caught), "not built" in str(caught[0].message))
    """)
    assert out.split() == ["False", "[0]", "1", "True"]


def test_broken_library_does_not_break_import(tmp_path):
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a shared library")
    out = _run(f"""
        import importlib.util, importlib.machinery
        real_find_spec = importlib.util.find_spec
        def fake(name, *a):
            if name == "ancis_fast._C":
                return importlib.util.spec_from_file_location(name, {str(broken)!r})
            return real_find_spec(name, *a)
        importlib.util.find_spec = fake
        from ancis_fast import ops
        print(ops.native_available(), "failed to load" in ops._native.reason())
    """)
    assert out.split() == ["False", "True"]


@pytest.mark.skipif(not ops.native_available(), reason=f"native ops not built: {_native.reason()}")
def test_forced_fallback_gives_native_results(monkeypatch):
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + torch.rand(300, 2, generator=g) * 30 + 1], dim=1)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 3, (300,), generator=g)
    features = torch.randn(2, 3, 40, 40, generator=g)
    bidx = torch.randint(0, 2, (300,), generator=g)
    probs = torch.rand(300, 8, 8, generator=g)
    calls = {
        "nms": lambda: ops.nms(boxes, scores, 0.5),
        "batched_nms": lambda: ops.batched_nms(boxes, scores, idxs, 0.5),
        "crop": lambda: ops.crop_and_resize(features, boxes / 4, bidx, (5, 5)),
        "paste": lambda: ops.paste_masks(probs, boxes, (100, 100), (150, 120)),
        "labels": lambda: ops.paste_masks(probs, boxes, (100, 100), (150, 120), label_image=True, scores=scores),
    }
    native = {name: fn() for name, fn in calls.items()}
    monkeypatch.setattr(_native, "use_native", lambda op, *tensors: False)
    for name, fn in calls.items():
        assert torch.equal(fn(), native[name]), name


@pytest.mark.skipif(not ops.native_available(), reason=f"native ops not built: {_native.reason()}")
def test_schemas_are_registered_once():
    for name in ("decode", "detect", "nms", "batched_nms", "crop_and_resize", "paste_masks", "paste_labels"):
        assert hasattr(torch.ops.ancis, name)
    info = torch.ops.ancis._build_info()
    assert info.startswith("torch=")
    # Importing the fake kernels again must not re-register them.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.native_available()
