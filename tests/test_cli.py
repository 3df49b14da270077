"""`ancis-fast predict` end to end with random weights."""
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile

from ancis_fast.cli import main
from ancis_fast.io.writers import output_stems
from conftest import blob_image, cli_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return cli_weights(tmp_path_factory.mktemp("weights"))


def test_predict_writes_everything_and_reports_bad_files(tmp_path, weights, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "one.png"), blob_image(seed=1))
    tifffile.imwrite(images / "two.tif", blob_image(seed=2)[:, :, 0].astype(np.uint16) * 100)
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["predict", str(images), "--out", str(out)] + weights)
    assert code == 1  # one input failed, the others are done
    err = capsys.readouterr().err
    assert "broken.png" in err and "2/3 input(s) done" in err
    assert "\x1b[" not in err  # stderr is no terminal here: no cursor moves of nested bars in logs
    written = 0
    for stem in ("one", "two"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == (160, 200)
        data = json.loads((out / f"{stem}.json").read_text())
        csv_rows = (out / f"{stem}.csv").read_text().strip().splitlines()[1:]
        assert data["num_instances"] == len(csv_rows) > 0
        assert set(np.unique(labels)) <= set(range(data["num_instances"] + 1))
        assert (out / f"{stem}_overlay.png").exists()
        written += data["num_instances"]
    # the summary counts the cells written (overlaps resolved, emptied cells dropped)
    assert re.search(r"2 frame\(s\) segmented, (\d+) cell\(s\)", err).group(1) == str(written)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert not (out / "broken_labels.tif").exists()


def test_predict_selected_outputs_and_success_code(tmp_path, weights):
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=3))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(out), "--save", "csv,labels",
                 "--label-format", "png"] + weights) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a_labels.png"]


def test_predict_max_detections_limits_the_written_cells(tmp_path, weights):
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=3))
    counts = {}
    for limit in ("1000", "3"):
        out = tmp_path / f"out{limit}"
        assert main(["predict", str(tmp_path / "a.png"), "--out", str(out), "--save", "json",
                     "--max-detections", limit, "--max-candidates", "50"] + weights) == 0
        counts[limit] = json.loads((out / "a.json").read_text())["num_instances"]
    assert counts["3"] == 3 < counts["1000"] <= 50


def test_predict_errors_exit_2(tmp_path, weights, capsys):
    assert main(["predict", str(tmp_path / "missing.png"), "--out", str(tmp_path)] + weights) == 2
    assert "missing.png" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "a.png"), blob_image())
    bad = ["--weights-det", weights[3], "--weights-seg", weights[3]] + weights[4:]  # segmenter file as detector
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")] + bad) == 2
    assert "segmenter checkpoint given as the detector" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path), "--save", "pdf"])


def test_predict_on_dataset_folders_segments_their_images_not_their_masks(tmp_path, weights, capsys):
    dsb = tmp_path / "dsb"
    for sample_id, has_masks in (("a", True), ("b", False)):  # Kaggle's test sets have no masks
        (dsb / sample_id / "images").mkdir(parents=True)
        cv2.imwrite(str(dsb / sample_id / "images" / f"{sample_id}.png"), blob_image(seed=4))
        if has_masks:
            (dsb / sample_id / "masks").mkdir()
            cv2.imwrite(str(dsb / sample_id / "masks" / "m1.png"), np.full((160, 200), 255, np.uint8))
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "masks").mkdir()
    cv2.imwrite(str(pairs / "images" / "x.png"), blob_image(seed=5))
    tifffile.imwrite(pairs / "masks" / "x_masks.tif", np.ones((160, 200), np.uint16))
    out = tmp_path / "out"
    assert main(["predict", str(dsb), str(pairs), "--out", str(out), "--save", "json"] + weights) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "x.json"]

    nested = tmp_path / "nested"
    (nested / "day1").mkdir(parents=True)
    cv2.imwrite(str(nested / "day1" / "c.png"), blob_image(seed=6))
    assert main(["predict", str(nested), "--out", str(tmp_path / "o2")] + weights) == 2
    assert "add --recursive" in capsys.readouterr().err
    assert main(["predict", str(nested), "--recursive", "--out", str(tmp_path / "o2"), "--save", "json"]
                + weights) == 0
    assert (tmp_path / "o2" / "c.json").is_file()


def test_closed_stdout_ends_quietly(tmp_path):
    """``ancis-fast evaluate ... | head -1``: no BrokenPipeError traceback."""
    for folder in ("images", "masks", "pred"):
        (tmp_path / folder).mkdir()
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    cv2.imwrite(str(tmp_path / "images" / "x.png"), (labels * 200).astype(np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "x.tif", labels)
    tifffile.imwrite(tmp_path / "pred" / "x_labels.tif", labels)
    command = [sys.executable, "-m", "ancis_fast", "evaluate", str(tmp_path), "--pred", str(tmp_path / "pred"),
               "--quiet"]
    assert "AP@0.5=1.0000" in subprocess.run(command, capture_output=True, text=True, check=True).stdout
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # the reader is gone before the child prints
    stderr = child.stderr.read()
    assert child.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_output_stems_disambiguate(tmp_path):
    from pathlib import Path

    assert output_stems([Path("x/a.png"), Path("x/b.png")]) == ["a", "b"]
    assert output_stems([tmp_path / "p" / "a.png", tmp_path / "q" / "a.tif"]) == ["p__a", "q__a"]


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "ancis_fast.cli", "--version"], capture_output=True, text=True,
                            env={**os.environ})
    assert result.returncode == 0 and "ancis_fast" in result.stdout


def test_stacks_videos_and_resume(tmp_path, weights, capsys):
    stack = np.stack([blob_image(seed=s)[:, :, 0] for s in range(6)]).reshape(3, 2, 160, 200)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    writer = cv2.VideoWriter(str(tmp_path / "movie.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (200, 160))
    for s in range(3):
        writer.write(blob_image(seed=10 + s))
    writer.release()
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "*.*"), "--out", str(out), "--save", "labels,csv"] + weights
    assert main(args) == 0
    names = sorted(p.name for p in out.glob("*_labels.tif"))
    assert names == sorted([f"stack_t{t:03d}_z{z:03d}_labels.tif" for t in range(3) for z in range(2)]
                           + [f"movie_f{f:06d}_labels.tif" for f in range(3)])
    capsys.readouterr()
    (out / "stack_t002_z001_labels.tif").unlink()
    before = (out / "movie_f000000_labels.tif").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert "1 frame(s) segmented, 8 already done" in capsys.readouterr().err
    assert (out / "stack_t002_z001_labels.tif").exists()
    assert (out / "movie_f000000_labels.tif").stat().st_mtime_ns == before
