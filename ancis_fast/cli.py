"""`ancis-fast` command line: thin wrappers that parse, call the API and report."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .config import FIELDS, MODES, PRECISION_NAMES, PredictorConfig

MAX_CALIBRATION_IMAGES = 8
DEFAULTS = PredictorConfig()  # the options' defaults

#: modules with a ``register(subparsers)`` function that adds their subcommands
SUBCOMMAND_MODULES: List[str] = [
    "ancis_fast.data.cli", "ancis_fast.train.cli", "ancis_fast.evaluate", "ancis_fast.export_cli",
]


def parse_size(text: str) -> tuple:
    """``"512"`` -> ``(512, 512)``; ``"512x640"`` or ``"512,640"`` -> ``(512, 640)``."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 512 or 512x640, got {text!r}") from None


def _kinds(text: str) -> List[str]:
    from .io.writers import SAVE_KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SAVE_KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--save takes a comma list of {','.join(SAVE_KINDS)}; got {text!r}")
    return kinds


def add_model_arguments(parser: argparse.ArgumentParser, inference: bool = True) -> None:
    """Options of the model, the CPU threads and the model's
    :class:`~ancis_fast.config.PredictorConfig` settings (names, defaults and choices from
    there); ``inference``: also the backend and the per-image options (zoom, diameter, min
    size) of commands that segment images."""
    from .backends import BACKEND_CHOICES, REGISTRY
    from .pipeline.preprocess import NORMALIZE_MODES

    parser.add_argument("--weights-det", help="detector checkpoint (default: bundled model)")
    parser.add_argument("--weights-seg", help="segmenter checkpoint (default: bundled model)")
    parser.add_argument("--backbone", default="resnet50", help="detector trunk (default: resnet50)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads for torch and OpenCV (default: torch's, one per core); on a shared "
                             "machine, the cores you may use")
    if inference:
        parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                            help="auto (default): the fastest backend for the device (eager on a CPU, torchscript "
                                 "on a GPU); " + "; ".join(f"{b.name}: {b.summary}" for b in REGISTRY.values()))
    add_precision_arguments(parser)
    parser.add_argument("--mode", default=DEFAULTS.mode, choices=MODES,
                        help="fast backends' mask stage: fixed crop shapes, static (fast) or native crop sizes (exact)")
    parser.add_argument("--input-size", type=parse_size, default=DEFAULTS.input_size,
                        help=f"network input HxW (default: {DEFAULTS.input_size[0]})")
    add_detection_arguments(parser)
    parser.add_argument("--normalize", default=DEFAULTS.normalize, choices=NORMALIZE_MODES,
                        help="conversion of non-8-bit images to 8-bit (default: auto = percentiles "
                             f"{DEFAULTS.percentiles[0]:g}/{DEFAULTS.percentiles[1]:g})")
    if not inference:
        return
    parser.add_argument("--zoom", default=DEFAULTS.zoom, type=_zoom, metavar="auto|Z",
                        help="segment images Z times enlarged (1-4), in input-size tiles, for crowded small "
                             "nuclei; auto (default): the spec's plain resize, then again scaled when the nuclei "
                             "found came out under half or over twice the best size (never beyond native "
                             "resolution), or 1.875x when they are crowded; 1: the plain resize only")
    parser.add_argument("--diameter", type=float, default=None, metavar="D",
                        help="typical nucleus diameter in image px: the image is scaled so that nuclei reach "
                             "the size the model segments best (instead of --zoom)")
    parser.add_argument("--min-size", type=int, default=DEFAULTS.min_size, metavar="N",
                        help="drop cells of fewer than N px")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _zoom(text: str):
    from .zoom import check_zoom

    try:
        return check_zoom(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and int8's ``--calibrate`` (see :func:`calibration_images`)."""
    parser.add_argument("--precision", default=DEFAULTS.precision, choices=PRECISION_NAMES,
                        help="fast backends' network dtype (default: fp32); fp16 needs a GPU, bf16 works on CPUs; "
                             "int8 (CPU, eager/torchscript): the detector trunk int8, calibrated on synthetic images")
    parser.add_argument("--calibrate", nargs="+", metavar="IMAGE_OR_DIR",
                        help=f"with --precision int8: images (or folders of them; the first {MAX_CALIBRATION_IMAGES} "
                             "are used) to calibrate int8's ranges on (default: synthetic images)")


def calibration_images(args: argparse.Namespace) -> Optional[List[Path]]:
    """The images of ``--calibrate`` (``None`` without it), for the Predictor's ``calibration``."""
    from .io.readers import find_images

    if not getattr(args, "calibrate", None):
        return None
    images = find_images(args.calibrate)[:MAX_CALIBRATION_IMAGES]
    if not images:
        raise ValueError(f"--calibrate {' '.join(args.calibrate)}: no images found")
    return images


def add_detection_arguments(parser: argparse.ArgumentParser) -> None:
    """Thresholds and per-image limits of detection and masks (PredictorConfig)."""
    parser.add_argument("--conf-thresh", type=float, default=DEFAULTS.conf_thresh,
                        help=f"detection score threshold (default: {DEFAULTS.conf_thresh})")
    parser.add_argument("--nms-thresh", type=float, default=DEFAULTS.nms_thresh,
                        help=f"NMS IoU threshold (default: {DEFAULTS.nms_thresh})")
    parser.add_argument("--seg-thresh", type=float, default=DEFAULTS.seg_thresh,
                        help=f"mask probability threshold (default: {DEFAULTS.seg_thresh})")
    parser.add_argument("--max-candidates", type=int, default=DEFAULTS.max_candidates, metavar="N",
                        help="candidates kept before NMS per image (default: all; the release used 200)")
    parser.add_argument("--max-detections", type=int, default=DEFAULTS.max_detections, metavar="N",
                        help=f"detections kept per image (default: {DEFAULTS.max_detections}; the release used 500)")


def config_overrides(args: argparse.Namespace) -> dict:
    """The :class:`~ancis_fast.config.PredictorConfig` settings that ``args`` has options for."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def set_threads(threads: Optional[int]) -> None:
    """Run torch's intra-op work (and so the native operators) and OpenCV on ``threads``
    threads; ``None`` leaves their defaults (one per core)."""
    if threads is None:
        return
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def predictor_options(args: argparse.Namespace) -> dict:
    """The Predictor keywords of :func:`add_model_arguments`' options."""
    return dict(detector_weights=args.weights_det, segmenter_weights=args.weights_seg, backbone=args.backbone,
                backend=getattr(args, "backend", "auto"), device=args.device, calibration=calibration_images(args),
                **config_overrides(args))


def build_predictor(args: argparse.Namespace):
    from . import Predictor

    set_threads(getattr(args, "threads", None))
    return Predictor(**predictor_options(args))


def _subfolder_hint(inputs: Sequence[str]) -> str:
    from .io.readers import find_images

    folders = [item for item in inputs if Path(item).is_dir()]
    if folders and find_images(folders, recursive=True):
        return "; they have images in sub-folders: add --recursive, or name the sub-folders"
    return ""


def _tiling_problem(args: argparse.Namespace) -> Optional[str]:
    if args.overlap < 0:
        return f"--overlap {args.overlap}: expected pixels >= 0"
    if args.tile is not None and args.tile <= args.overlap:
        return (f"--tile {args.tile} must be larger than --overlap {args.overlap} (tiles overlap by that much); "
                "use a tile of several hundred px (e.g. --tile 512) or a smaller --overlap")
    return None


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.layouts import expand_datasets
    from .io.readers import INPUT_SUFFIXES, find_images
    from .io.writers import output_stems, remove_stale_temp_files
    from .models.weights import CheckpointError

    problem = _tiling_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.scheduler or args.workers:
        return _predict_distributed(args)
    if args.background:
        print("error: --background skips the empty blocks of slides segmented on a Dask cluster; add --workers N "
              "or --scheduler ADDRESS, or leave it out", file=sys.stderr)
        return 2
    missing: List[str] = []
    try:
        paths = find_images(expand_datasets(args.inputs), recursive=args.recursive, missing=missing)
        if not paths:  # nothing to do at all: a usage error, not a failed input
            found = "; ".join(missing) or (f"no inputs ({', '.join(INPUT_SUFFIXES)}) found in {args.inputs}"
                                           f"{_subfolder_hint(args.inputs)}")
            print(f"error: {found}", file=sys.stderr)
            return 2
        predictor = build_predictor(args)
    except (FileNotFoundError, CheckpointError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for stale in remove_stale_temp_files(args.out):
        print(f"removed {stale.name}: a temporary file of an interrupted run", file=sys.stderr)
    run = _Run(len(paths) + len(missing), failures=list(missing))
    for message in missing:
        print(f"failed: {message}", file=sys.stderr)
    bar = tqdm(paths, desc="segmenting", unit="file", disable=args.quiet)
    try:
        for path, stem in zip(bar, output_stems(paths)):
            try:
                _predict_input(args, predictor, path, stem, run)
                run.finished += 1
            except (ValueError, OSError) as exc:  # a bad input is reported; its finished frames are kept
                run.failures.append(str(path))
                tqdm.write(f"failed: {path}: {exc}", file=sys.stderr)
            bar.set_postfix(frames=run.frames, cells=run.cells)
    except KeyboardInterrupt:  # atomic writes leave no partial file behind
        bar.close()
        print(f"\ninterrupted: {run.summary(args.out)}\nrun the same command with --resume to go on "
              "(finished images and frames are skipped)", file=sys.stderr)
        return 130
    bar.close()
    print(run.summary(args.out), file=sys.stderr)
    if run.failures:
        print(f"{len(run.failures)} input(s) failed: {', '.join(run.failures)}", file=sys.stderr)
    return 1 if run.failures else 0


@dataclass
class _Run:
    """Counts of one ``predict`` run, for its summary line."""

    inputs: int
    failures: List[str]
    finished: int = 0
    frames: int = 0
    skipped: int = 0
    cells: int = 0
    started: float = field(default_factory=time.perf_counter)

    def summary(self, out: str) -> str:
        elapsed = time.perf_counter() - self.started
        return (f"{self.finished}/{self.inputs} input(s) done: {self.frames} frame(s) segmented"
                f"{f', {self.skipped} already done' if self.skipped else ''}, {self.cells} cell(s), {elapsed:.1f} s"
                f"{f' ({self.frames / elapsed:.2f} frames/s)' if self.frames else ''}; outputs in {out}")


def _predict_input(args: argparse.Namespace, predictor, path: Path, stem: str, run: _Run) -> None:
    """Segment and write every frame of one input (``--resume`` skips finished frames)."""
    from tqdm import tqdm

    from .io.readers import iter_frames
    from .io.writers import output_paths, write_instances
    from .pipeline.preprocess import to_bgr8

    # bars below the files' bar move the cursor up (ESC [A): only where a terminal shows them
    nested = not args.quiet and sys.stderr.isatty()
    for suffix, image in tqdm(iter_frames(path), desc=path.name, unit="frame", leave=False, disable=not nested):
        name = stem + suffix
        if args.resume and all(p.exists() for p in output_paths(args.out, name, args.save, args.label_format).values()):
            run.skipped += 1
            continue
        instances = predictor.predict(image, tile=args.tile, overlap=args.overlap, progress=nested)
        bgr8 = to_bgr8(image, predictor.config.normalization) if "overlay" in args.save else None
        written = instances.without_overlaps()  # the cells the outputs hold (each pixel to one cell)
        write_instances(written, args.out, name, args.save, bgr8, args.label_format)
        run.frames, run.cells = run.frames + 1, run.cells + len(written)


def _predict_distributed(args: argparse.Namespace) -> int:
    """``predict`` on a Dask cluster (:func:`ancis_fast.distributed.predict_command`)."""
    try:
        from .distributed import predict_command

        return predict_command(args, predictor_options(args))
    except ImportError as exc:
        print(f"error: --scheduler/--workers need the dask extra (pip install 'ancis_fast[dask]'): {exc}",
              file=sys.stderr)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


def _register_predict(subparsers) -> None:
    from .io.writers import DEFAULT_SAVE, SAVE_KINDS

    parser = subparsers.add_parser("predict", help="segment cells in images and write labels/JSON/CSV/overlays")
    parser.add_argument("inputs", nargs="+",
                        help="image files, TIFF stacks, videos, folders or glob patterns (quote them); a "
                             "dataset folder (DSB <id>/images/, or images/ + masks/) gives its images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--save", type=_kinds, default=list(DEFAULT_SAVE),
                        help=f"comma list of {','.join(SAVE_KINDS)} (default: {','.join(DEFAULT_SAVE)})")
    parser.add_argument("--label-format", choices=["tif", "png"], default="tif",
                        help="label image format: 16/32-bit TIFF (default) or 16-bit PNG")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--resume", action="store_true",
                        help="skip images/frames whose requested outputs all exist (writes are atomic)")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="segment in tiles of this many px at native resolution (automatic above 2048 px, in "
                             f"{DEFAULTS.tile_size} px tiles; 512 is faster, with cells that depend more on where "
                             "the seams fall)")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in px (default: 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run on the Dask cluster at ADDRESS (e.g. tcp://host:8786; pip install .[dask]): files "
                              "spread over its workers, zarr/OME-Zarr images and TIFFs over 8192 px in blocks")
    cluster.add_argument("--workers", type=int, metavar="N",
                         help="the same on a local Dask cluster of N worker processes")
    parser.add_argument("--background", choices=["dark", "bright"], default=None,
                        help="with --scheduler/--workers: segment only the blocks of a slide where Otsu's threshold "
                             "on a low-resolution view finds tissue (dark: fluorescence, bright: bright-field)")
    add_model_arguments(parser)
    parser.set_defaults(func=_predict)


def make_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ancis-fast", description="ANCIS cell instance segmentation")
    parser.add_argument("--version", action="version", version=f"ancis_fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_predict(subparsers)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 128 + SIGINT, as shells report it
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout has gone (``ancis-fast evaluate ... | head``): stop quietly
        # like other command-line tools, and keep Python's exit-time flush from failing too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
