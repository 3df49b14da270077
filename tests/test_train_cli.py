"""`ancis-fast train-det` / `train-seg` / `evaluate` run end to end from the command line."""
import argparse
import json

import pytest

from ancis_fast import evaluate
from ancis_fast.data import cli as data_cli
from ancis_fast.train import cli as train_cli


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (data_cli, train_cli, evaluate):
        module.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_det_train_seg_and_evaluate(tmp_path):
    data = tmp_path / "data"
    assert _run(["synth", "--out", str(data), "--n", "2", "--size", "64", "--workers", "1", "--quiet",
                 "--diameter", "8,14", "--count", "5,15"]) == 0
    common = ["--backbone", "resnet18", "--input-size", "64", "--device", "cpu", "--batch-size", "2", "--quiet",
              "--recipe", "fast", "--warmup", "0", "--epochs", "1"]
    det = tmp_path / "det"
    assert _run(["train-det", "--data", str(data), "--val", "synth:1", "--out", str(det), *common]) == 0
    assert (det / "detector.pt").is_file() and (det / "detector_state.pt").is_file()
    seg = tmp_path / "seg"
    assert _run(["train-seg", "--detector", str(det / "detector.pt"), "--data", "synth:2", "--out", str(seg),
                 "--gt-boxes", *common]) == 0
    assert (seg / "segmenter.pt").is_file()
    report = tmp_path / "report.json"
    assert _run(["evaluate", str(data), "--weights-det", str(det / "detector.pt"), "--weights-seg",
                 str(seg / "segmenter.pt"), "--backbone", "resnet18", "--input-size", "64", "--quiet",
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["images"] == 2 and len(result["images"]) == 2


def test_train_det_reports_bad_input(tmp_path, capsys):
    assert _run(["train-det", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert _run(["train-det", "--data", "synth:x", "--out", str(tmp_path / "o")]) == 2
