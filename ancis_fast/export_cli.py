"""`ancis-fast export`: write a deployable file of the fast pipeline (see :mod:`ancis_fast.export`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import add_detection_arguments, add_precision_arguments, calibration_images, detection_options, parse_size

HELP = """\
formats (all take the network input [B,3,H,W] float32, BGR in [0,1] at --input-size):
  every format holds the whole pipeline (detector, detection, mask stage) and outputs,
  padded to M = --box-budget boxes per image: boxes [B,M,4] (y1,x1,y2,x2 input px),
  scores [B,M], labels [B,M], counts [B], probs [B,M,h,w], mask_sizes [B,M,2].
  torchscript  (.pt) scripted; fast mode reads its boxes per crop shape from the data.
  aoti         (.pt2) AOTInductor, one static graph (fast mode): fixed batch size
               (--batch-size) and boxes per crop shape measured on --image (2x
               headroom); boxes beyond those get no mask. Minutes to compile on a CPU.
  Both run in C++ with csrc/tools/ancis_run.
  tensorrt     delegated to ancis_fast.backends.tensorrt (NVIDIA GPU + torch_tensorrt).
"""


def _export(args: argparse.Namespace) -> int:
    from . import Predictor
    from .export import ExportUnavailable, export_predictor, save_runner_input
    from .io.readers import read_image
    from .models.weights import CheckpointError
    from .pipeline.preprocess import preprocess

    try:
        # reduced precision needs a fast backend; the export reuses an eager predictor's pipeline
        backend = "reference" if args.precision == "fp32" else "eager"
        predictor = Predictor(args.weights_det, args.weights_seg, backbone=args.backbone, device=args.device,
                              backend=backend, precision=args.precision, input_size=args.input_size, mode=args.mode,
                              calibration=calibration_images(args), **detection_options(args))
        # read the image first: a bad one should not leave a fresh export behind
        image = read_image(args.image or Path(__file__).parent / "assets" / "sample.png")
        x, _ = preprocess(image, predictor.config.input_size, predictor.config.normalization)
        options = {"box_budget": args.box_budget} if args.format != "tensorrt" else {}
        if args.format == "aoti":
            options.update(batch_size=args.batch_size, examples=x)
        started = time.perf_counter()
        path = export_predictor(predictor, args.out, args.format, **options)
        if args.example_input:
            save_runner_input(x, args.example_input)
    except (FileNotFoundError, CheckpointError, ValueError, ExportUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.format} to {path} in {time.perf_counter() - started:.1f} s"
          f"{f'; runner input in {args.example_input}' if args.example_input else ''}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser("export", help="write a TorchScript / AOTInductor / TensorRT file of the model",
                                   description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=["torchscript", "aoti", "tensorrt"], default="torchscript",
                        help="torchscript (default), aoti (static graph) or tensorrt: see the formats above")
    parser.add_argument("--out", required=True, help="output file (.pt for torchscript, .pt2 for aoti)")
    parser.add_argument("--weights-det", help="detector checkpoint (default: bundled model)")
    parser.add_argument("--weights-seg", help="segmenter checkpoint (default: bundled model)")
    parser.add_argument("--backbone", default="resnet50", help="detector trunk (default: resnet50)")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512), help="network input HxW (default: 512)")
    parser.add_argument("--mode", default="fast", choices=["fast", "exact"],
                        help="mask stage: fixed crop shapes, static (fast, default) or native crop sizes (exact)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the export runs (default: cpu)")
    add_detection_arguments(parser)
    add_precision_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="aoti only: the fixed batch size (default: 1)")
    parser.add_argument("--example-input", metavar="F",
                        help="also write a preprocessed input tensor for the C++ runner ancis_run")
    parser.add_argument("--box-budget", type=int, default=None,
                        help="boxes per image in the outputs (default: --max-detections)")
    parser.add_argument("--image", help="image for --example-input and aoti's budgets (default: the bundled sample)")
    parser.set_defaults(func=_export)
