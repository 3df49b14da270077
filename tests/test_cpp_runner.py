"""The C++ runner csrc/tools/ancis_run on TorchScript and AOTInductor exports, against the
Python fast path.

Builds the CMake target ``ancis_run`` in ``$ANCIS_BUILD_DIR`` (default ``build/``; an
existing build is reused, a first build of libancis_ops takes minutes: slow tests).
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ancis_fast import Predictor
from ancis_fast.export import export_predictor, save_runner_input
from ancis_fast.ops import native_available
from ancis_fast.pipeline.preprocess import preprocess
from ancis_fast.predictor import PredictorConfig
from conftest import blob_image, random_models

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("ANCIS_BUILD_DIR", ROOT / "build"))
SIZE = (128, 128)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not native_available(), reason="exports call the compiled ancis operators"),
    pytest.mark.skipif(shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")),
                       reason="building csrc/tools/ancis_run needs cmake and a C++ compiler"),
]


def _run(*args, timeout=1800):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def runner():
    if not (BUILD / "CMakeCache.txt").exists():
        configured = _run("cmake", "-S", ROOT, "-B", BUILD)
        assert configured.returncode == 0, configured.stdout + configured.stderr
    built = _run("cmake", "--build", BUILD, "--target", "ancis_run")
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return BUILD / "ancis_run"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runner")
    predictor = Predictor.from_models(*random_models(seed=2, mask_bias=0.3), backend="eager",
                                      config=PredictorConfig(input_size=SIZE, crop_sizes=(16,), max_detections=64))
    x = torch.cat([preprocess(blob_image(seed=s), SIZE)[0] for s in range(2)])
    return predictor, x, export_predictor(predictor, folder / "model.pt"), save_runner_input(x, folder / "input.pt")


def _expected_rows(outputs):
    """CSV rows of the padded outputs: batch_idx, label, score, y1, x1, y2, x2, mask_h, mask_w."""
    boxes, scores, labels, counts, _, mask_sizes = (t.cpu() for t in outputs)
    rows = [[b, labels[b, i], scores[b, i], *boxes[b, i].tolist(), *mask_sizes[b, i].tolist()]
            for b in range(len(counts)) for i in range(int(counts[b]))]
    return np.array(rows, dtype=np.float64)


def _check_runner(runner, model, example, expected, tmp_path):
    csv = tmp_path / "detections.csv"
    result = _run(runner, model, example, "--runs", 3, "--warmup", 1, "--threads", 1, "--out", csv, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"instances: {len(expected)}" in result.stdout and "median latency:" in result.stdout
    rows = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    assert len(rows) == len(expected) > 0
    np.testing.assert_array_equal(rows[:, [0, 1, 7, 8]], expected[:, [0, 1, 7, 8]])
    np.testing.assert_allclose(rows[:, 2:7], expected[:, 2:7], atol=1e-5, rtol=0)


def test_runner_matches_python(runner, exported, tmp_path):
    predictor, x, model, example = exported
    with torch.inference_mode():
        expected = _expected_rows(predictor.pipeline.core()(x))
    _check_runner(runner, model, example, expected, tmp_path)


def test_runner_runs_the_aoti_package(runner, exported, tmp_path):
    """The whole static pipeline as an AOTInductor package, loaded by AOTIModelPackageLoader."""
    from ancis_fast.export import load_exported

    predictor, x, _, example = exported
    package = export_predictor(predictor, tmp_path / "model.pt2", format="aoti", batch_size=x.shape[0], examples=x)
    budgets = load_exported(package).config["shape_budgets"]
    with torch.inference_mode():
        expected = _expected_rows(predictor.pipeline.core(shape_budgets=budgets)(x))
    _check_runner(runner, package, example, expected, tmp_path)


def test_runner_reports_bad_inputs(runner, exported, tmp_path):
    _, _, model, _ = exported
    wrong = save_runner_input(torch.zeros(1, 3, 64, 64), tmp_path / "wrong.pt")
    result = _run(runner, model, wrong, "--runs", 1, "--warmup", 0, timeout=300)
    assert result.returncode == 1 and "expects [B, 3, 128, 128]" in result.stderr
    result = _run(runner, model, timeout=60)
    assert result.returncode == 2 and "usage:" in result.stderr
    checked = _run(runner, "--check-ops", timeout=60)
    assert checked.returncode == 0, checked.stderr
