"""benchmarks/fps.py, the speed harness users run first: it says where its tables and plots
went (they land in a folder of its choosing, easy to lose), and it draws its sweep plots."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

FPS = Path(__file__).resolve().parents[1] / "benchmarks" / "fps.py"


@pytest.fixture(scope="module")
def fps():
    spec = importlib.util.spec_from_file_location("fps_harness", FPS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_run_says_where_it_wrote_its_results(fps, tmp_path, capsys):
    out = tmp_path / "bench"
    assert fps.main(["--backends", "eager", "--no-sweep", "--warmup", "0", "--iters", "1", "--sizes", "128",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    named = re.search(r"^results: (.+)$", err, re.M).group(1).split(", ")
    assert sorted(Path(p).name for p in named) == ["results.csv", "results.json", "results.md"]
    assert all(Path(p).is_file() and Path(p).parent == out for p in named)
    assert re.search(r"^plots: none \(--no-sweep\)$", err, re.M)


def test_sweeps_become_png_plots_and_the_message_names_them(fps, tmp_path):
    pytest.importorskip("matplotlib")
    sweeps = {"cells": [{"found": n, "ms": 10.0 + n} for n in (5, 50, 200)],
              "sizes": [{"size": s, "ms": s / 10} for s in (256, 512, 1024)]}
    plots = fps.plot(sweeps, tmp_path, "eager")
    assert [p.name for p in plots] == ["sweep_cells.png", "sweep_sizes.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert fps.written_message(tmp_path, plots, "unused").splitlines()[1] == f"plots: {plots[0]}, {plots[1]}"
