"""`ancis-fast train-det` and `ancis-fast train-seg`."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

from ..data.cli import add_style_ranges, style_ranges


def _sources(args: argparse.Namespace, config):
    """Training source (the ``--data`` sources one after the other) and validation source."""
    from ..data.synthetic import SynthConfig
    from .data import CLASS_WEIGHTS, ConcatSource, parse_source

    synth = SynthConfig(size=args.synth_size or tuple(args.input_size), **style_ranges(args, "synth-"))
    parts = [parse_source(spec, synth, args.seed, split=args.split, frame=config.frame_size(),
                          crop=tuple(config.input_size), class_weights=args.class_weights or CLASS_WEIGHTS,
                          placement=args.placement)
             for spec in args.data]
    train = parts[0] if len(parts) == 1 else ConcatSource(parts)
    val = parse_source(args.val, synth, args.seed, validation=True, split=args.val_split) if args.val else None
    return train, val


def _class_weights(text: str) -> Dict[str, float]:
    from .data import parse_class_weights

    try:
        return parse_class_weights(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share in [0, 1]")
    return value


def _common(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(out_dir=args.out, backbone=args.backbone, input_size=tuple(args.input_size),
                prior_height=args.prior_height, recipe=args.recipe,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                device=args.device, workers=args.workers, seed=args.seed, val_every=args.val_every,
                save_every=args.save_every, resume=args.resume, init_weights=args.init, max_steps=args.max_steps,
                time_limit=None if args.time_limit is None else args.time_limit * 60.0,
                stop_after=None if args.stop_after is None else args.stop_after * 60.0, amp=args.amp, rot90=args.rot90,
                max_expand=args.max_expand, freeze_bn=args.freeze_bn, quiet=args.quiet)


def _report(summary: Dict[str, Any]) -> int:
    best = summary["best"]
    shown = f"{best:.4f}" if best > float("-inf") else "n/a (no validation)"
    print(f"done: {summary['global_step']} step(s), epoch {summary['epoch']}; best AP@0.5 {shown}; "
          f"weights {summary['weights']}" + (f", best {summary['best_weights']}" if summary["best_weights"] else ""),
          file=sys.stderr)
    return 0


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _train_det(args: argparse.Namespace) -> int:
    from .detector import DetectorTrainConfig, train_detector

    _set_threads(args)
    try:
        config = DetectorTrainConfig(**_common(args))
        config.resolved_recipe()
        train, val = _sources(args, config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(train_detector(config, train, val))


def _train_seg(args: argparse.Namespace) -> int:
    from ..models.weights import CheckpointError
    from .segmenter import SegmenterTrainConfig, train_segmenter

    _set_threads(args)
    try:
        config = SegmenterTrainConfig(detector_weights=args.detector, max_boxes=args.max_boxes,
                                      gt_boxes=args.gt_boxes, **_common(args))
        config.resolved_recipe()
        train, val = _sources(args, config)
        return _report(train_segmenter(config, train, val))
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..cli import parse_size

    parser.add_argument("--data", required=True, nargs="+",
                        help="training data, one or more (used one after the other): a dataset folder (DSB or "
                             "images/+masks/; its images are resized to the inference frame, the prior height or "
                             "else the input size, and cut into input-size crops at 0.75-2x that scale) or synth:N "
                             "(N fresh synthetic images per epoch)")
    parser.add_argument("--split", choices=["all", "train", "val"], default="all",
                        help="train on this part of each --data folder's seeded split, stratified by image class "
                             "(the one evaluate --split scores; default: all)")
    parser.add_argument("--val", help="validation data: a folder (resized to the inference frame) or synth:N "
                                      "(a fixed synthetic set)")
    parser.add_argument("--val-split", choices=["all", "train", "val"], default="all",
                        help="validate on this part of the --val folder's split (default: all)")
    parser.add_argument("--out", required=True, help="output folder for checkpoints and log.jsonl")
    parser.add_argument("--backbone", default="resnet50", help="resnet50 (release), resnet101, resnet152, "
                                                               "resnet18/34 (small, no release weights)")
    parser.add_argument("--input-size", type=parse_size, default=(512, 512),
                        help="network input HxW (default 512); use the model at this size afterwards")
    parser.add_argument("--prior-height", type=int,
                        help="size the priors for this input height instead (e.g. 512 while training on 256 "
                             "crops, so that the model runs at a 512 input)")
    parser.add_argument("--recipe", choices=["release", "fast"], default="release",
                        help="release: the paper's optimiser/schedule (default); fast: AdamW + warm-up + cosine, "
                             "for training from scratch")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument("--warmup", type=int, help="override the recipe's linear warm-up steps")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is often faster "
                                                    "on a small machine shared with other jobs)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0 = in-process)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, order and init (default: 0)")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default: 1)")
    parser.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (default: epochs only)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/<stage>_state.pt if present")
    parser.add_argument("--init", help="start from these weights instead of a fresh initialisation")
    parser.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in total")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="train for this long (wall clock, resumed runs included): the cosine schedule anneals "
                             "by whichever of time and epochs is further along, then validates and checkpoints")
    parser.add_argument("--stop-after", type=float, metavar="MINUTES",
                        help="end this run after this long with a checkpoint, the schedule left where it is: a "
                             "slice of a longer --time-limit run, continued with --resume")
    parser.add_argument("--freeze-bn", action="store_true",
                        help="keep BatchNorm running statistics as --init has them (fine-tuning with small batches)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--rot90", action="store_true", help="add random quarter turns to the augmentation")
    parser.add_argument("--max-expand", type=float, default=2.0,
                        help="the augmentation's largest zoom-out (default: 2, the release's; 1 disables it, e.g. "
                             "for dataset folders, whose crops are already at the inference scale)")
    parser.add_argument("--class-weights", type=_class_weights, metavar="CLASS=W,...",
                        help="how often crops of dataset folders are drawn from each image class, e.g. "
                             "fluorescence=0.4,tissue=0.4,brightfield=0.2 (default: 0.5, 0.3, 0.2)")
    parser.add_argument("--placement", type=_share, default=0.0, metavar="SHARE",
                        help="share of the crops of dataset folders cut smaller and placed at a random spot of a "
                             "median-filled canvas, as padded tiles are at inference (default: 0)")
    parser.add_argument("--synth-size", type=parse_size, help="synthetic image size (default: the input size)")
    add_style_ranges(parser, "synth-")  # of the synth:N data
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add the ``train-det`` and ``train-seg`` subcommands."""
    det = subparsers.add_parser("train-det", help="train the cell detector (spec §7)")
    _add_common(det)
    det.set_defaults(func=_train_det)

    seg = subparsers.add_parser("train-seg", help="train the mask head on a frozen detector (spec §7)")
    seg.add_argument("--detector", required=True, help="trained detector weights (e.g. <out>/detector_best.pt)")
    seg.add_argument("--max-boxes", type=int, default=64, help="boxes per image per step, 0 = all (default: 64)")
    seg.add_argument("--gt-boxes", action="store_true", help="also train on the ground-truth boxes")
    _add_common(seg)
    seg.set_defaults(func=_train_seg)
