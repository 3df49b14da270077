"""`ancis-fast export`: write a deployable file of the fast pipeline (see :mod:`ancis_fast.export`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import add_detection_arguments, add_precision_arguments, calibration_images, detection_options, parse_size

HELP = """\
formats (all take the network input [B,3,H,W] float32, BGR in [0,1] at --input-size):
  torchscript  (.pt)  the whole fast pipeline: detector, detection and mask stage;
               outputs boxes [K,4] (y1,x1,y2,x2 input px), scores, labels, batch_idx,
               probs [K,h,w], mask_sizes [K,2]. Runs in C++ with csrc/tools/ancis_run.
  aoti         (.pt2) AOTInductor package of the detector + fused detection only
               (padded boxes [B,M,4], scores [B,M], labels [B,M], counts [B]); the
               data-dependent mask stage cannot be traced by torch.export. Fixed batch
               size (--batch-size). Compiling takes minutes on a CPU.
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
        if args.example_input:  # read the image first: a bad one should not leave a fresh export behind
            image = read_image(args.image or Path(__file__).parent / "assets" / "sample.png")
            x, _ = preprocess(image, predictor.config.input_size, predictor.config.normalization)
        options = {"batch_size": args.batch_size} if args.format == "aoti" else {}
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
                        help="torchscript: whole pipeline (default); aoti: detector + detection only; tensorrt")
    parser.add_argument("--out", required=True, help="output file (.pt for torchscript, .pt2 for aoti)")
    parser.add_argument("--weights-det", help="detector checkpoint (default: bundled model)")
    parser.add_argument("--weights-seg", help="segmenter checkpoint (default: bundled model)")
    parser.add_argument("--backbone", default="resnet50", help="detector trunk (default: resnet50)")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512), help="network input HxW (default: 512)")
    parser.add_argument("--mode", default="fast", choices=["fast", "exact"],
                        help="mask stage: size buckets (fast, default) or native crop sizes (exact)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the export runs (default: cpu)")
    add_detection_arguments(parser)
    add_precision_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="aoti only: the fixed batch size (default: 1)")
    parser.add_argument("--example-input", metavar="F",
                        help="also write a preprocessed input tensor for the C++ runner ancis_run")
    parser.add_argument("--image", help="image for --example-input (default: the bundled sample)")
    parser.set_defaults(func=_export)
