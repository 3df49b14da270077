"""`ancis-fast export`: write a deployable file of the fast pipeline (see :mod:`ancis_fast.export`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import add_model_arguments, predictor_options, set_threads

HELP = """\
formats (all take the network input [B,3,H,W] float32, BGR in [0,1] at --input-size):
  every format holds the whole pipeline (detector, detection, mask stage) and outputs,
  padded to M = --box-budget boxes per image: boxes [B,M,4] (y1,x1,y2,x2 input px),
  scores [B,M], labels [B,M], counts [B], probs [B,M,h,w], mask_sizes [B,M,2].
  aoti's and tensorrt's boxes per crop shape are measured on --image (2x headroom); boxes
  beyond those get no mask. torchscript and aoti run in C++ with csrc/tools/ancis_run.
"""


def _formats_help() -> str:
    from .export import FORMATS

    return "\n".join(f"  {f.name:<12} ({f.suffix}; {', '.join(f.devices)}) {f.summary}" for f in FORMATS.values())


def _export(args: argparse.Namespace) -> int:
    from . import Predictor
    from .export import FORMATS, ExportUnavailable, export_predictor, save_runner_input
    from .io.readers import read_image
    from .models.weights import CheckpointError
    from .pipeline.preprocess import preprocess

    set_threads(args.threads)
    try:
        # reduced precision needs a fast backend; the export reuses an eager predictor's pipeline
        options = predictor_options(args)
        options["backend"] = "reference" if args.precision == "fp32" else "eager"
        predictor = Predictor(**options)
        # read the image first: a bad one should not leave a fresh export behind
        image = read_image(args.image or Path(__file__).parent / "assets" / "sample.png")
        x, _ = preprocess(image, predictor.config.input_size, predictor.config.normalization)
        wanted = {"box_budget": args.box_budget, "batch_size": args.batch_size, "examples": x}
        export_options = {k: v for k, v in wanted.items() if k in FORMATS[args.format].options}
        started = time.perf_counter()
        path = export_predictor(predictor, args.out, args.format, **export_options)
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
    from .export import FORMATS

    parser = subparsers.add_parser("export", help="write a TorchScript / AOTInductor / TensorRT file of the model",
                                   description=HELP + _formats_help(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=tuple(FORMATS), default="torchscript",
                        help="the file format (default: torchscript): see the formats above")
    parser.add_argument("--out", required=True,
                        help="output file (" + ", ".join(f"{f.suffix} for {f.name}" for f in FORMATS.values()) + ")")
    add_model_arguments(parser, inference=False)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="aoti and tensorrt: the fixed batch size (default: 1)")
    parser.add_argument("--example-input", metavar="F",
                        help="also write a preprocessed input tensor for the C++ runner ancis_run")
    parser.add_argument("--box-budget", type=int, default=None,
                        help="boxes per image in the outputs (default: --max-detections)")
    parser.add_argument("--image", help="image for --example-input and aoti's budgets (default: the bundled sample)")
    parser.set_defaults(func=_export)
