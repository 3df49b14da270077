"""`ancis-fast synth`: write a synthetic dataset (DSB or label-image layout)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Tuple

from .layouts import write_dsb, write_label_layout
from .synthetic import SynthConfig, generate


def _pair(kind):
    def parse(text: str) -> Tuple:
        parts = text.lower().replace("x", ",").split(",")
        try:
            values = tuple(kind(p) for p in (parts * 2 if len(parts) == 1 else parts))
        except ValueError:
            values = ()
        if len(values) != 2:
            raise argparse.ArgumentTypeError(f"expected one value or two separated by ',' (e.g. 6,60), got {text!r}")
        return values
    return parse


#: the :class:`SynthConfig` ranges that ``synth`` and the trainers' ``synth:N`` data both expose
STYLE_RANGES = (
    ("diameter", float, "range of typical nucleus diameter per image, px"),
    ("count", int, "range of nuclei per image (capped by the space available)"),
    ("blur", float, "range of the optical blur sigma per image, px (more: softer edges)"),
    ("edge_floor", float, "range of the stain level at a nucleus's labelled edge, share of its core (about 0.5: "
                          "edges labelled near half-maximum, as annotators draw them)"),
)


def add_style_ranges(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--{prefix}diameter`` etc., with :class:`SynthConfig`'s defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    for name, kind, text in STYLE_RANGES:
        default = defaults[name]
        parser.add_argument(f"--{prefix}{name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{name}",
                            type=_pair(kind), default=default,
                            help=f"{text} (default: {','.join(f'{v:g}' for v in default)})")


def style_ranges(args: argparse.Namespace, prefix: str = "") -> Dict[str, Tuple]:
    """The :class:`SynthConfig` keyword arguments that :func:`add_style_ranges` parsed."""
    return {name: getattr(args, f"{prefix.replace('-', '_')}{name}") for name, _, _ in STYLE_RANGES}


def _write_one(index: int, out: str, layout: str, seed: int, config: SynthConfig) -> int:
    sample = generate((seed, index), config, name=f"synth_{seed}_{index:06d}")
    (write_dsb if layout == "dsb" else write_label_layout)(sample, out)
    return int(sample.labels.max(initial=0))


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        config = SynthConfig(size=args.size, p_16bit=args.p_16bit, p_colour=args.p_colour,
                             p_brightfield=args.p_brightfield, **style_ranges(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n < 1 or args.seed < 0 or args.start < 0:
        print(f"error: --n must be >= 1 and --seed/--start >= 0 (got {args.n}, {args.seed}, {args.start})", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = partial(_write_one, out=args.out, layout=args.layout, seed=args.seed, config=config)
    indices = range(args.start, args.start + args.n)
    started, cells = time.perf_counter(), 0
    progress = tqdm(total=args.n, desc="synth", unit="img", disable=args.quiet)
    if args.workers > 1:
        with get_context("spawn").Pool(args.workers) as pool:
            for count in pool.imap(work, indices, chunksize=4):
                cells += count
                progress.update()
    else:
        for index in indices:
            cells += work(index)
            progress.update()
    progress.close()
    elapsed = time.perf_counter() - started
    print(f"{args.n} image(s), {cells} nuclei in {elapsed:.1f} s ({args.n / elapsed * 60:.0f} images/min) "
          f"-> {args.out} ({args.layout} layout)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``synth`` subcommand."""
    parser = subparsers.add_parser(
        "synth", help="write synthetic fluorescence-nuclei images with instance masks",
        description="Seeded synthetic dataset: image i depends only on (--seed, i), so runs can be extended "
                    "with --start and interrupted runs resumed (finished samples are kept).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=500, help="number of images (default: 500)")
    parser.add_argument("--size", type=_pair(int), default=(512, 512), help="image size, 512 or HxW (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image (default: 0)")
    parser.add_argument("--layout", choices=["dsb", "labels"], default="dsb",
                        help="dsb: <id>/images/<id>.png + <id>/masks/<k>.png (default); "
                             "labels: images/<id>.png + masks/<id>.tif label images (much faster to write)")
    add_style_ranges(parser)
    parser.add_argument("--p-16bit", type=float, default=0.2, help="share of 16-bit gray images (default: 0.2)")
    parser.add_argument("--p-colour", type=float, default=0.25, help="share of coloured stains (default: 0.25)")
    parser.add_argument("--p-brightfield", type=float, default=0.1,
                        help="share of bright-field (dark nuclei) images (default: 0.1)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_synth)
