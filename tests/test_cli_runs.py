"""`ancis-fast predict` runs that survive: missing inputs, Ctrl-C, killed runs' temporary
files, files that are not checkpoints, bad tile arguments, --threads (random weights)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import tifffile

from ancis_fast.cli import main
from ancis_fast.io.writers import TEMP_NAME, atomic_path, remove_stale_temp_files
from conftest import blob_image, cli_weights

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    # zoom 1 and a candidate cap: random weights' junk detections would otherwise look crowded
    return cli_weights(tmp_path_factory.mktemp("weights")) + ["--zoom", "1", "--max-candidates", "50"]


def _cli(args, **kwargs):
    """The CLI in a fresh interpreter, with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # SIGINT back to its default in the child: a test run that ignores it (some plugin or
    # library of the full suite does) would pass SIG_IGN on, and Ctrl-C would be lost
    return subprocess.Popen([sys.executable, "-m", "ancis_fast.cli"] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_missing_input_is_one_failed_input(tmp_path, weights, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=1))
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "a.png"), str(tmp_path / "gone.png"), str(tmp_path / "none_*.png"),
            "--out", str(out), "--save", "json"]
    assert main(args + weights) == 1
    err = capsys.readouterr().err
    assert "gone.png" in err and "none_*.png" in err and "1/3 input(s) done" in err
    assert json.loads((out / "a.json").read_text())["num_instances"] >= 0
    # nothing to segment at all stays a usage error
    assert main(["predict", str(tmp_path / "gone.png"), "--out", str(out)] + weights) == 2
    assert "gone.png" in capsys.readouterr().err


def test_tile_not_larger_than_overlap_is_a_bad_argument(tmp_path, weights, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=1))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(out), "--tile", "32"] + weights) == 2
    assert "--tile 32 must be larger than --overlap 64" in capsys.readouterr().err
    assert not out.exists()  # refused before any model or file was touched
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(out), "--tile", "96", "--overlap", "16",
                 "--save", "csv"] + weights) == 0


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path, weights, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    stale = [out / f".a_labels.{dead}.k2j_x9q0.tmp.tif", out / f".a.{dead}.abcdefgh.tmp.json"]
    kept = [out / f".b.{alive}.abcdefgh.tmp.json",  # a run writing at this moment
            out / ".notes.tmp", out / "a.tmp.json", out / f"a.{dead}.abcdefgh.tmp.json"]  # not our pattern
    for path in stale + kept:
        path.write_text("x")
    with atomic_path(out / "c.json") as tmp:  # the pattern is what atomic_path writes
        assert TEMP_NAME.fullmatch(tmp.name) and str(os.getpid()) in tmp.name
    assert remove_stale_temp_files(out) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)

    stale[0].write_text("x")
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=1))
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(out), "--save", "json", "--resume"] + weights) == 0
    assert f"removed {stale[0].name}" in capsys.readouterr().err
    assert not stale[0].exists() and all(p.exists() for p in kept)


def test_ctrl_c_stops_cleanly_and_resume_goes_on(tmp_path, weights):
    # enough images (about 10 s of work) that a loaded machine's scheduler cannot let the
    # whole run finish between the first output and the interrupt (30 did, once)
    count = 60
    images = tmp_path / "images"
    images.mkdir()
    for i in range(count):
        cv2.imwrite(str(images / f"img{i:02d}.png"), blob_image(256, 320, cells=20, seed=i))
    out = tmp_path / "out"
    args = ["predict", str(images), "--out", str(out), "--save", "labels,json", "--threads", "1"] + weights
    child = _cli(args)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.json")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    done = sorted(p.stem for p in out.glob("*.json"))
    assert 0 < len(done) < count, "the run should stop part-way"
    for stem in done:  # every finished output is whole
        assert json.loads((out / f"{stem}.json").read_text())["image_size"] == [256, 320]
    for labels in out.glob("*_labels.tif"):
        assert tifffile.imread(labels).shape == (256, 320)
    written = {stem: (out / f"{stem}.json").stat().st_mtime_ns for stem in done}

    child = _cli(args + ["--resume"])
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr
    assert len(list(out.glob("*.json"))) == len(list(out.glob("*_labels.tif"))) == count
    assert f"{len(done)} already done" in stderr  # labels are written first: a JSON means both exist
    assert all((out / f"{stem}.json").stat().st_mtime_ns == ns for stem, ns in written.items())


def test_threads_sets_torch_and_opencv_threads(tmp_path, weights):
    cv2.imwrite(str(tmp_path / "a.png"), blob_image(seed=1))
    code = ("import sys, cv2, torch; from ancis_fast.cli import main; rc = main(sys.argv[1:]); "
            "print('threads', torch.get_num_threads(), cv2.getNumThreads()); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for threads in ("3", "1"):
        result = subprocess.run([sys.executable, "-c", code, "predict", str(tmp_path / "a.png"), "--out",
                                 str(tmp_path / "out"), "--save", "csv", "--threads", threads] + weights,
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"threads {threads} {threads}" in result.stdout
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path), "--threads", "0"])


def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, weights, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), blob_image(seed=1))
    assert main(["predict", str(image), "--out", str(tmp_path / "out"), "--weights-det", str(image),
                 "--weights-seg", weights[3]] + weights[4:]) == 2
    err = capsys.readouterr().err
    assert "is not a PyTorch checkpoint: it is a PNG image" in err and "state dict" in err
    assert "weights_only" not in err
