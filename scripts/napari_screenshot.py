"""Open the bundled sample in napari with the ancis_fast plugin, press **Run** in the
**Segment cells** widget, check that the Labels layer holds the cells `ancis-fast predict`
writes for the same image, and save a screenshot of the window.

    python scripts/napari_screenshot.py [--out docs/napari_widget.png] [--threads 1]

Needs `pip install .[napari]`. Without a display it runs itself again under `xvfb-run`
(package xvfb). Exit status 1 when the widget's cells differ from the CLI's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREEN = "-screen 0 1600x1000x24"


def rerun_under_xvfb() -> None:
    """No display: run this script again under a virtual one."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    if not shutil.which("xvfb-run"):
        sys.exit("no display and no xvfb-run: install xvfb (see scripts/setup.sh, .ci/run) or run it on a desktop")
    os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", SCREEN, sys.executable, *sys.argv])


def register_plugin(plugin: str = "ancis_fast") -> str:
    """Make napari see the plugin: pip-installed, its entry point does; from a checkout
    that is not, the manifest file is registered directly. Returns which of the two."""
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    if plugin in manager._manifests:
        return "found through its napari.manifest entry point"
    manager.register(npe2.PluginManifest.from_file(ROOT / "ancis_fast" / "napari.yaml"))
    return "registered from the checkout's file (not pip-installed)"


def wait_while(condition, timeout_s: float = 600.0) -> None:
    """Run Qt's event loop (as napari does) while ``condition()`` holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + timeout_s
    loop, check = QEventLoop(), QTimer()
    check.timeout.connect(lambda: loop.quit() if not condition() or time.monotonic() > deadline else None)
    check.start(20)
    loop.exec()
    check.stop()
    if condition():
        raise TimeoutError(f"still busy after {timeout_s:.0f} s")


def cli_labels(image: Path, threads: int):
    """The label image `ancis-fast predict` writes for ``image`` (its entry point run here,
    so that it is the same ancis_fast as the viewer's)."""
    import tifffile

    from ancis_fast.cli import main as ancis_fast_cli

    with tempfile.TemporaryDirectory() as out:
        if ancis_fast_cli(["predict", str(image), "--out", out, "--save", "labels", "--threads", str(threads),
                           "--quiet"]) != 0:
            raise RuntimeError("ancis-fast predict failed")
        return tifffile.imread(Path(out) / f"{image.stem}_labels.tif")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "napari_widget.png", help="screenshot PNG")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for inference (default: 1)")
    args = parser.parse_args()
    rerun_under_xvfb()

    import napari
    import numpy as np
    import torch

    from ancis_fast.io.writers import atomic_path
    from ancis_fast.models.weights import ASSETS

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(title="ancis_fast in napari")
    viewer.window.resize(1600, 900)
    plugin_source = register_plugin()
    viewer.open_sample("ancis_fast", "sample")
    _, widget = viewer.window.add_plugin_dock_widget("ancis_fast", "Segment cells")
    started = time.perf_counter()
    widget.run_button.click()
    wait_while(lambda: widget.busy)
    import ancis_fast

    print(f"ancis_fast from {Path(ancis_fast.__file__).parent}; plugin manifest {plugin_source}")
    print(f"widget: {widget.status_label.text()} (Run pressed to cells shown: {time.perf_counter() - started:.1f} s)")
    widget_labels = viewer.layers["sample cells"].data
    want = cli_labels(ASSETS / "sample.png", args.threads)
    same = np.array_equal(widget_labels, want)
    print(f"ancis-fast predict: {int(want.max())} cells; the widget's Labels layer is "
          f"{'identical' if same else 'DIFFERENT'}")
    viewer.layers.selection.active = viewer.layers["sample cells"]
    viewer.reset_view()
    drawn = time.monotonic() + 0.5
    wait_while(lambda: time.monotonic() < drawn, 10)
    with atomic_path(args.out) as tmp:
        viewer.screenshot(str(tmp), canvas_only=False)
    print(f"screenshot: {args.out}")
    viewer.close()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
