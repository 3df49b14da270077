"""Drive napari's live mode from outside and measure how long the GUI's event loop is ever
blocked: a "camera" timer replaces the image layer's data at ``--fps`` while the **Segment
cells** widget re-segments it live; a 5 ms probe timer records when the event loop runs.

    python scripts/napari_live_stall.py [--seconds 30] [--fps 10] [--threads 1]

Prints one JSON line: frames handed over, shown and skipped, the latency from a data change
to its cells shown, and the longest gap between probe ticks beyond the 5 ms period: the
longest stall of the event loop over the whole run (from switching live mode on: making
the Labels layer and loading the model included), and after the first result is shown. Needs
`pip install .[napari]`; without a display it runs itself again under `xvfb-run`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from napari_screenshot import register_plugin, rerun_under_xvfb, wait_while  # noqa: E402

PROBE_MS = 5


def camera_frames(image, count: int):
    """``count`` distinct frames of ``image``: shifted by a few pixels each, as a drifting stage."""
    import numpy as np

    return [np.roll(image, (7 * k, 11 * k), axis=(0, 1)) for k in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the camera runs (default: 30)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for inference (default: 1)")
    parser.add_argument("--without-live", action="store_true",
                        help="the camera alone, live mode off: the stalls napari's own drawing makes")
    args = parser.parse_args()
    rerun_under_xvfb()

    import napari
    import numpy as np
    import torch
    from qtpy.QtCore import QTimer

    from ancis_fast.io.readers import read_image
    from ancis_fast.models.weights import ASSETS

    torch.set_num_threads(args.threads)
    register_plugin()
    viewer = napari.Viewer(title="ancis_fast live")
    frames = camera_frames(read_image(ASSETS / "sample.png"), 16)
    layer = viewer.add_image(frames[0], name="camera")
    _, widget = viewer.window.add_plugin_dock_widget("ancis_fast", "Segment cells")
    latencies, shown_at = [], []
    widget.cells_shown.connect(lambda shown: (latencies.append(shown.latency_s), shown_at.append(time.perf_counter())))

    ticks = []
    probe = QTimer()
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    camera = QTimer()
    sent = [0]

    def next_frame():
        sent[0] += 1
        layer.data = frames[sent[0] % len(frames)]

    camera.timeout.connect(next_frame)
    settle = time.monotonic() + 2.0
    wait_while(lambda: time.monotonic() < settle)  # napari's start-up drawing is not what is measured
    probe.start(PROBE_MS)
    widget.live_check.setChecked(not args.without_live)
    camera.start(int(1000 / args.fps))
    end = time.monotonic() + args.seconds
    wait_while(lambda: time.monotonic() < end, args.seconds + 10)
    camera.stop()
    wait_while(lambda: widget.live_shown + widget.live_skipped < widget.live_submitted)
    probe.stop()
    submitted, shown, skipped = widget.live_submitted, widget.live_shown, widget.live_skipped
    widget.live_check.setChecked(False)
    wait_while(lambda: not widget.idle)
    ticks = np.array(ticks)
    gaps_ms = np.diff(ticks) * 1000 - PROBE_MS
    # after the first result is shown: the steady state (the first one makes the Labels layer)
    steady = gaps_ms[ticks[:-1] >= shown_at[0]] if shown_at else gaps_ms
    measured = [lat * 1000 for lat in latencies if lat is not None] or [float("nan")]
    print(json.dumps({
        "live": not args.without_live, "camera_fps": args.fps, "seconds": args.seconds, "threads": args.threads,
        "frames_submitted": submitted, "frames_shown": shown, "frames_skipped": skipped,
        "latency_ms_median": round(float(np.median(measured)), 1),
        "latency_ms_p90": round(float(np.percentile(measured, 90)), 1),
        "event_loop_longest_stall_ms": round(float(gaps_ms.max()), 1),
        "event_loop_stall_ms_p99": round(float(np.percentile(gaps_ms, 99)), 1),
        "event_loop_longest_stall_after_first_result_ms": round(float(steady.max()), 1),
    }))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
