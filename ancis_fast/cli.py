"""`ancis-fast` command line: thin wrappers that parse, call the API and report."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

MAX_CALIBRATION_IMAGES = 8

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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that builds a Predictor."""
    parser.add_argument("--weights-det", help="detector checkpoint (default: bundled model)")
    parser.add_argument("--weights-seg", help="segmenter checkpoint (default: bundled model)")
    parser.add_argument("--backbone", default="resnet50", help="detector trunk (default: resnet50)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--backend", default="reference",
                        choices=["reference", "eager", "torchscript", "compile", "tensorrt"],
                        help="reference: spec-exact (default); eager/torchscript/compile: the batched fast "
                             "pipeline; tensorrt: the same with a TensorRT detector (NVIDIA GPU, pip install .[tensorrt])")
    add_precision_arguments(parser)
    parser.add_argument("--mode", default="fast", choices=["fast", "exact"],
                        help="fast backends' mask stage: size buckets (fast) or native crop sizes (exact)")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512), help="network input HxW (default: 512)")
    add_detection_arguments(parser)
    parser.add_argument("--normalize", default="auto", choices=["auto", "percentile", "minmax", "none"],
                        help="conversion of non-8-bit images to 8-bit (default: auto = percentiles 1/99.8)")
    parser.add_argument("--zoom", default="auto", type=_zoom, metavar="auto|Z",
                        help="segment images Z times enlarged (1-4), in input-size tiles, for crowded small "
                             "nuclei; auto (default): 1.875 for images whose detections are crowded, else 1 "
                             "(the spec's plain resize)")
    parser.add_argument("--diameter", type=float, default=None, metavar="D",
                        help="typical nucleus diameter in image px: the image is scaled so that nuclei reach "
                             "the size the model segments best (instead of --zoom)")
    parser.add_argument("--min-size", type=int, default=0, metavar="N", help="drop cells of fewer than N px")


def _zoom(text: str):
    from .zoom import check_zoom

    try:
        return check_zoom(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and int8's ``--calibrate`` (see :func:`calibration_images`)."""
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
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
    parser.add_argument("--conf-thresh", type=float, default=0.3, help="detection score threshold (default: 0.3)")
    parser.add_argument("--nms-thresh", type=float, default=0.3, help="NMS IoU threshold (default: 0.3)")
    parser.add_argument("--seg-thresh", type=float, default=0.5, help="mask probability threshold (default: 0.5)")
    parser.add_argument("--max-candidates", type=int, default=None, metavar="N",
                        help="candidates kept before NMS per image (default: all; the release used 200)")
    parser.add_argument("--max-detections", type=int, default=1000, metavar="N",
                        help="detections kept per image (default: 1000; the release used 500)")


def detection_options(args: argparse.Namespace) -> dict:
    """The Predictor keywords of :func:`add_detection_arguments`."""
    return dict(conf_thresh=args.conf_thresh, nms_thresh=args.nms_thresh, seg_thresh=args.seg_thresh,
                max_candidates=args.max_candidates, max_detections=args.max_detections)


def build_predictor(args: argparse.Namespace):
    from . import Predictor

    return Predictor(args.weights_det, args.weights_seg, backbone=args.backbone, backend=args.backend,
                     mode=args.mode, device=args.device, precision=getattr(args, "precision", "fp32"),
                     input_size=args.input_size, normalize=args.normalize, calibration=calibration_images(args),
                     zoom=args.zoom, diameter=args.diameter, min_size=args.min_size, **detection_options(args))


def output_stems(paths: Sequence[Path]) -> List[str]:
    """Unique output names: the file stem, prefixed by its folders below the inputs'
    common folder when two inputs share a stem (``a/x.png``, ``b/x.png`` -> ``a__x``, ``b__x``)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return ["__".join(p.resolve().relative_to(root).with_suffix("").parts) for p in paths]


def _expand_datasets(inputs: Sequence[str]) -> List[str]:
    """Inputs with each dataset folder (DSB ``<id>/images/``, or ``images/`` + ``masks/``)
    replaced by its images, so that predicting on a dataset never segments its masks."""
    from .data.layouts import dataset_images

    expanded: List[str] = []
    for item in inputs:
        images = dataset_images(item)
        expanded += [str(p) for p in images] if images else [item]
    return expanded


def _subfolder_hint(inputs: Sequence[str]) -> str:
    from .io.readers import find_images

    folders = [item for item in inputs if Path(item).is_dir()]
    if folders and find_images(folders, recursive=True):
        return "; they have images in sub-folders: add --recursive, or name the sub-folders"
    return ""


def _predict(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from .io.readers import INPUT_SUFFIXES, find_images, iter_frames
    from .io.writers import output_paths, write_instances
    from .models.weights import CheckpointError
    from .pipeline.preprocess import to_bgr8

    try:
        paths = find_images(_expand_datasets(args.inputs), recursive=args.recursive)
        if not paths:
            print(f"error: no inputs ({', '.join(INPUT_SUFFIXES)}) found in {args.inputs}"
                  f"{_subfolder_hint(args.inputs)}", file=sys.stderr)
            return 2
        predictor = build_predictor(args)
    except (FileNotFoundError, CheckpointError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started, frames, skipped, cells, failures = time.perf_counter(), 0, 0, 0, []
    bar = tqdm(paths, desc="segmenting", unit="file", disable=args.quiet)
    for path, stem in zip(bar, output_stems(paths)):
        try:
            for suffix, image in tqdm(iter_frames(path), desc=path.name, unit="frame", leave=False,
                                      disable=args.quiet):
                name = stem + suffix
                if args.resume and all(p.exists() for p in output_paths(args.out, name, args.save, args.label_format).values()):
                    skipped += 1
                    continue
                instances = predictor.predict(image, tile=args.tile, overlap=args.overlap, progress=not args.quiet)
                bgr8 = to_bgr8(image, predictor.config.normalization) if "overlay" in args.save else None
                write_instances(instances, args.out, name, args.save, bgr8, args.label_format)
                frames, cells = frames + 1, cells + len(instances)
                bar.set_postfix(frames=frames, cells=cells)
        except (ValueError, OSError) as exc:  # a bad input is reported; its finished frames are kept
            failures.append(path)
            tqdm.write(f"failed: {path}: {exc}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(f"{len(paths) - len(failures)}/{len(paths)} input(s) done: {frames} frame(s) segmented"
          f"{f', {skipped} already done' if skipped else ''}, {cells} cell(s), {elapsed:.1f} s"
          f"{f' ({frames / elapsed:.2f} frames/s)' if frames else ''}; outputs in {args.out}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed: {', '.join(map(str, failures))}", file=sys.stderr)
    return 1 if failures else 0


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
    parser.add_argument("--tile", type=int, default=None,
                        help="segment in tiles of this many px at native resolution (automatic above 2048 px)")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in px (default: 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
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
    except BrokenPipeError:
        # the reader of stdout has gone (``ancis-fast evaluate ... | head``): stop quietly
        # like other command-line tools, and keep Python's exit-time flush from failing too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
