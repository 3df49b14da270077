"""Segmenting on a Dask cluster: one huge 2-D image in overlapping blocks, or many files.

Needs the optional extra ``pip install .[dask]`` (dask, distributed, zarr); nothing else
in ancis_fast imports this module.

**One huge image** (:func:`segment_image`: a zarr array, an OME-Zarr image's full-resolution
level, or a TIFF read through tifffile's zarr store; gray or colour, 8/16-bit):

1. conversion to 8-bit uses statistics of the whole image (a histogram per block, summed),
   so every block has the same contrast, as :meth:`Predictor.predict`'s tiling does;
2. the image is cut into windows of ``block + overlap`` px laid out by
   :func:`ancis_fast.tiling.tile_starts` (stride ``block``); each worker reads its window
   from the file itself and segments it with ``predict(window, tile=..., overlap=...)``
   (the window's tiles are its views, :mod:`ancis_fast.views`, batched as on one machine),
   and saves the cells to ``<out>/<name>.blocks/`` (reused by ``resume``);
3. the windows are stitched on the workers by :func:`ancis_fast.tiling.stitch`'s rules
   (each cell taken from the window where it lies farthest from the inner edges, once; no
   two cells overlapping by mask IoU over :data:`ancis_fast.tiling.DUPLICATE_IOU`), so a
   cell crossing a seam is one instance with one id: only the cells near the seams are
   compared, group by group (:mod:`ancis_fast.distributed_stitch`);
4. the workers write the labels, chunk by chunk, to ``<out>/<name>_labels.zarr`` (chunked
   like the input), to an OME-NGFF label pyramid ``<out>/<name>_cells.ome.zarr`` (napari,
   ome-zarr-py; :mod:`ancis_fast.io.ngff`) and the rows of the cell table (id, score, box, area, centroid:
   :meth:`Instances.to_csv`), which the client joins into ``<out>/<name>.csv``. The client
   holds no mask. Ids run window by window, by descending score within a window (see
   :mod:`ancis_fast.distributed_stitch`).

**Many files** (:func:`segment_files`): one task per file, the same outputs as
``ancis-fast predict`` (:func:`ancis_fast.io.writers.write_instances`), atomic, ``resume``
skipping frames whose outputs exist.

Each worker process builds its Predictor once, from keyword arguments (weights are paths
the workers read), and keeps it (:func:`worker_predictor`); tasks carry only those settings.
A failing block or file is reported by name and the others finish; a killed worker's
tasks are recomputed by dask.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .config import FIELDS, PredictorConfig
from .instances import Instances
from .io.ngff import create_label_image, downsample_chunk, level_chunks, ngff_path, source_levels, source_pixel_size
from .io.readers import iter_frames
from .io.writers import DEFAULT_SAVE, atomic_path, output_paths, write_instances
from .pipeline.preprocess import Normalization, _scale_to_uint8, to_bgr8, to_uint8, validate_image
from .background import BACKGROUNDS, assemble, thumbnail_piece, tissue_mask, view_factor, windows_with_tissue
from .distributed_stitch import (chunk_cells, load_cells, number_window, paint_chunk, resolve_group, seam_groups,
                                 sort_out_window, write_table)
from .tiling import tile_starts, tile_windows

PathLike = Union[str, os.PathLike]
DEFAULT_BLOCK = 2048  # px; windows when the input's chunks are too small or thin to follow
HUGE_TIFF_ABOVE = 8192  # px; the CLI segments TIFFs with a longer side in blocks, smaller ones as files
MIN_LABEL_CHUNK = 256  # px; thinner input chunks (TIFF strips) give (block, block) label chunks
ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


# ------------------------------------------------------------------ the model, once per worker

@dataclass(frozen=True)
class PredictorSpec:
    """What a worker builds its predictor from: keyword arguments of
    :class:`~ancis_fast.Predictor` (paths, not weights) or of ``factory`` (any callable
    returning an object with ``predict(image, tile=, overlap=)`` and ``config.normalization``)."""

    options: Tuple[Tuple[str, Any], ...] = ()
    factory: Optional[Callable[..., Any]] = None

    @classmethod
    def of(cls, options: Optional[Mapping[str, Any]] = None, factory: Optional[Callable[..., Any]] = None
           ) -> "PredictorSpec":
        items = dict(options or {})
        for key in ("detector_weights", "segmenter_weights"):
            if key in items:
                items[key] = _absolute(items[key])
        if items.get("calibration") is not None:
            items["calibration"] = [_absolute(p) for p in items["calibration"]]
        return cls(tuple(sorted(items.items())), factory)

    @property
    def key(self) -> str:
        """Identifies the predictor these settings build (the per-process cache key)."""
        name = "" if self.factory is None else f"{self.factory.__module__}.{self.factory.__qualname__}"
        return f"{name}{self.options!r}"

    def build(self) -> Any:
        if self.factory is None:
            from .predictor import Predictor

            return Predictor(**dict(self.options))
        return self.factory(**dict(self.options))

    def with_options(self, **changes: Any) -> "PredictorSpec":
        return PredictorSpec.of({**dict(self.options), **changes}, self.factory)


def _absolute(value: Any) -> Any:
    """Paths made absolute, so that workers started elsewhere find them."""
    return str(Path(value).resolve()) if isinstance(value, (str, os.PathLike)) else value


_PREDICTORS: Dict[str, Any] = {}
_PREDICTORS_LOCK = threading.Lock()


def worker_predictor(spec: PredictorSpec) -> Any:
    """The predictor of ``spec`` in this process, built on first use and kept."""
    with _PREDICTORS_LOCK:
        if spec.key not in _PREDICTORS:
            _PREDICTORS[spec.key] = spec.build()
        return _PREDICTORS[spec.key]


def built_predictors() -> int:
    """How many predictors this process has built (run on workers to check: one each)."""
    return len(_PREDICTORS)


# ------------------------------------------------------------------ reading a huge image

@dataclass(frozen=True)
class ImageSource:
    """A 2-D image on disk, read window by window in the project's layout (``HxW`` or
    ``HxWxC`` BGR(A)): a zarr array (``path``, or ``path`` + ``component`` inside a group),
    an OME-Zarr image (its first multiscale level, axes from its metadata) or a TIFF
    (first series, level 0, through tifffile's zarr store). Colour zarr arrays are taken as
    RGB(A), the convention of OME-Zarr and napari; TIFFs follow their photometric tag."""

    path: str
    component: str = ""
    axes: str = ""  # e.g. "yx", "yxc", "cyx", "tczyx"; all but y, x, c must have size 1
    rgb: bool = False

    @property
    def name(self) -> str:
        """Output name: the file name without ``.ome.zarr`` / ``.zarr`` / ``.tif(f)``."""
        name = Path(self.path).name
        for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return Path(name).stem

    @property
    def shape(self) -> Tuple[int, ...]:
        """``(H, W)`` or ``(H, W, C)``."""
        array = _open(self)
        size = dict(zip(self.axes, array.shape))
        return (size["y"], size["x"]) + ((size["c"],) if size.get("c", 1) > 1 else ())

    @property
    def chunks(self) -> Tuple[int, int]:
        """The stored chunk size along ``(y, x)``."""
        chunk = dict(zip(self.axes, _open(self).chunks))
        return chunk["y"], chunk["x"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_open(self).dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as ``HxW`` or ``HxWxC`` (BGR(A) order)."""
        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else slice(None) if a == "c" else 0
                      for a in self.axes)
        kept = [a for a in self.axes if a in "yxc"]
        pixels = np.moveaxis(np.asarray(_open(self)[index]), [kept.index(a) for a in "yxc" if a in kept],
                             range(len(kept)))
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        if self.rgb and pixels.ndim == 3:
            pixels = pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]]
        return np.ascontiguousarray(pixels)


def open_image(path: PathLike) -> ImageSource:
    """An :class:`ImageSource` for a zarr / OME-Zarr folder or a TIFF file, with its axes
    worked out; raises ``ValueError`` naming the path when it is not a 2-D gray or colour image."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {str(path)!r}")
    if path.suffix.lower() in (".tif", ".tiff"):
        source = _tiff_source(path)
    elif is_zarr(path):
        source = _zarr_source(path)
    else:
        raise ValueError(f"{str(path)!r} is neither a zarr/OME-Zarr folder nor a TIFF; segment ordinary "
                         "images with segment_files")
    array = _open(source)
    extra = {a: n for a, n in zip(source.axes, array.shape) if a not in "yxc" and n > 1}
    if extra or len(source.axes) != len(array.shape) or not {"y", "x"} <= set(source.axes):
        raise ValueError(f"{str(path)!r} has axes {source.axes!r} and shape {tuple(array.shape)}; expected one 2-D "
                         f"gray or colour image (other axes of size 1){f', not {extra}' if extra else ''}")
    channels = dict(zip(source.axes, array.shape)).get("c", 1)
    if channels not in (1, 3, 4):
        raise ValueError(f"{str(path)!r} has {channels} channels; expected 1 (gray), 3 (colour) or 4 (with alpha)")
    validate_image(np.zeros((1, 1, channels) if channels > 1 else (1, 1), array.dtype), str(path))
    return source


def is_zarr(path: PathLike) -> bool:
    """A zarr array or group folder (v2 or v3 metadata)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).exists() for marker in ZARR_MARKERS)


_OPENED: Dict[ImageSource, Any] = {}


def _open(source: ImageSource) -> Any:
    """The source's zarr array, opened once per process."""
    if source not in _OPENED:
        import zarr

        if Path(source.path).suffix.lower() in (".tif", ".tiff"):
            import tifffile

            _OPENED[source] = zarr.open(tifffile.imread(source.path, aszarr=True, series=0, level=0), mode="r")
        else:
            _OPENED[source] = zarr.open(source.path, mode="r", path=source.component or None)
    return _OPENED[source]


def _tiff_source(path: Path) -> ImageSource:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.lower().replace("s", "c")  # tifffile's S: samples (colour) of a pixel
        rgb = series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB
    return ImageSource(str(path), "", axes, rgb)


def _zarr_source(path: Path) -> ImageSource:
    import zarr

    node = zarr.open(str(path), mode="r")
    component, axes = "", ""
    if not hasattr(node, "shape"):  # a group: OME-Zarr (v0.4 attrs or v0.5 under "ome")
        attrs = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise ValueError(f"{str(path)!r} is a zarr group without OME-Zarr multiscales metadata; "
                             "give the path of the image array inside it")
        component = multiscales[0]["datasets"][0]["path"]
        axes = "".join(a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])).lower()
        node = zarr.open(str(path), mode="r", path=component)
    return ImageSource(str(path), component, axes or _guess_axes(node.shape, path), rgb=True)


def _guess_axes(shape: Sequence[int], path: Path) -> str:
    """Axes of a plain zarr array: ``yx``, ``yxc`` (last side 1/3/4) or ``cyx``."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        return "yxc" if shape[2] in (1, 3, 4) else "cyx"
    raise ValueError(f"{str(path)!r} is a zarr array of shape {tuple(shape)}; expected HxW, HxWxC or CxHxW "
                     "(store other layouts as OME-Zarr with axes metadata)")


# ------------------------------------------------------------------ whole-image statistics

def _window_histogram(source: ImageSource, window: Tuple[int, int, int, int]) -> Tuple[np.ndarray, int]:
    """Counts of each value in a window of an integer image of at most 16 bits: ``(counts, offset)``."""
    pixels = source.read(*window)
    offset = int(np.iinfo(pixels.dtype).min)
    return np.bincount((pixels.astype(np.int64) - offset).ravel(), minlength=1 << (8 * pixels.dtype.itemsize)), offset


def _window_range(source: ImageSource, window: Tuple[int, int, int, int]) -> Tuple[float, float]:
    pixels = source.read(*window)
    return float(pixels.min()), float(pixels.max())


def sorted_value(counts: np.ndarray, offset: int, rank: np.ndarray) -> np.ndarray:
    """The values at positions ``rank`` of the sorted image, from its histogram."""
    return offset + np.searchsorted(np.cumsum(counts), rank, side="right")


def percentiles_from_histogram(counts: np.ndarray, offset: int, q: Sequence[float]) -> Tuple[float, ...]:
    """``np.percentile(image, q)`` (linear interpolation) of the image whose value
    ``offset + k`` occurs ``counts[k]`` times."""
    position = np.asarray(q, np.float64) / 100 * (int(counts.sum()) - 1)
    low, frac = np.floor(position), position - np.floor(position)
    below, above = sorted_value(counts, offset, low), sorted_value(counts, offset, np.ceil(position))
    return tuple(float(v) for v in below + (above - below) * frac)


def conversion_range(client, source: ImageSource, windows: List[Tuple[int, int, int, int]],
                     norm: Normalization) -> Optional[Tuple[float, float]]:
    """The ``(low, high)`` that :func:`~ancis_fast.pipeline.preprocess.to_uint8` would map to
    0 / 255 on the whole image, from statistics of its ``windows`` (which must tile it
    without overlap) computed on the workers; ``None`` when it needs none."""
    dtype = source.dtype
    if norm.mode == "none" or (dtype == np.uint8 and norm.mode == "auto"):
        return None
    if norm.mode != "minmax" and not (np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2):
        raise ValueError(f"{source.path}: percentile conversion of {dtype} images is not supported in blocks; "
                         "use normalize='minmax' or 'none', or store the image as 8/16-bit")
    parts = client.map(_window_range if norm.mode == "minmax" else _window_histogram, [source] * len(windows),
                       windows, pure=False)
    failed = _wait(client, parts, [f"{source.name} statistics of {_window_name(w)}" for w in windows], False)
    if failed:
        raise BlocksFailed(failed)
    if norm.mode == "minmax":
        ranges = client.gather(parts)
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    counts, offset = client.submit(_sum_histograms, parts).result()
    return percentiles_from_histogram(counts, offset, norm.percentiles)


class BlocksFailed(RuntimeError):
    """Some blocks could not be read or segmented; ``failed`` lists ``(name, error)``."""

    def __init__(self, failed: List[Tuple[str, str]]):
        super().__init__("; ".join(f"{name}: {error}" for name, error in failed))
        self.failed = failed


def _sum_histograms(parts: List[Tuple[np.ndarray, int]]) -> Tuple[np.ndarray, int]:
    return np.sum([p[0] for p in parts], axis=0), parts[0][1]


def _chunk_windows(height: int, width: int, chunks: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """Non-overlapping windows of ``chunks`` px covering the image, ``(y0, y1, x0, x1)``."""
    return [(y, min(y + chunks[0], height), x, min(x + chunks[1], width))
            for y in range(0, height, chunks[0]) for x in range(0, width, chunks[1])]


# ------------------------------------------------------------------ one huge image

@dataclass
class ImageResult:
    """What :func:`segment_image` did: outputs (``None`` when blocks failed), cell count,
    ``failed`` blocks as ``(name, error)``, and the seconds taken."""

    name: str
    labels: Optional[Path] = None
    table: Optional[Path] = None
    ngff: Optional[Path] = None  # the OME-NGFF label image (<out>/<name>_cells.ome.zarr)
    cells: int = 0
    blocks: int = 0
    block: int = 0  # the window stride used, px
    reused: int = 0  # windows kept from an interrupted run (resume)
    skipped: int = 0  # windows without tissue, not segmented (background=)
    already_done: bool = False  # resume found both outputs: nothing was run
    failed: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: the stitched cells (image pixels) with ``keep_instances=True`` (their label ids in
    #: ``instances.meta["ids"]``); else ``None``
    instances: Optional[Instances] = None
    #: seconds of each step (all run on the workers): ``statistics``, ``background`` (with
    #: ``background=``: the tissue found), ``blocks`` (segmenting), ``stitch``
    #: (seams decided, ids given), ``write`` (labels painted, table joined)
    timings: Dict[str, float] = field(default_factory=dict)


def image_outputs(out: PathLike, name: str) -> Tuple[Path, Path]:
    """``(<out>/<name>_labels.zarr, <out>/<name>.csv)``."""
    return Path(out) / f"{name}_labels.zarr", Path(out) / f"{name}.csv"


def segment_image(client, path: PathLike, out: PathLike, predictor: Union[PredictorSpec, Mapping[str, Any], None] = None,
                  *, block: Optional[int] = None, overlap: int = 64, tile: Optional[int] = None,
                  tile_overlap: Optional[int] = None,
                  name: Optional[str] = None, resume: bool = False, progress: bool = False,
                  keep_instances: bool = False, ngff: bool = True, background: Optional[str] = None) -> ImageResult:
    """Segment one huge 2-D image on the cluster of ``client`` (see module docstring).

    Args:
        path: zarr / OME-Zarr folder or TIFF (see :class:`ImageSource`).
        out: output folder (shared by the client and the workers).
        predictor: :class:`~ancis_fast.Predictor` keyword arguments, or a :class:`PredictorSpec`;
            its ``normalize`` / ``percentiles`` convert the whole image to 8-bit.
        block: window stride in px; windows are ``block + overlap`` px. Default: the multiple
            of ``tile - tile_overlap`` nearest the input's chunk side (2048 for thin chunks), so
            that the windows' tiles lie on the grid ``predict(image, tile=...)`` uses on the
            whole image (the far edges aside) and no pixel is segmented more often than there.
        overlap: overlap of the windows in px; must exceed the largest cell diameter.
        tile, tile_overlap: each window is segmented with ``predict(window, tile, tile_overlap)``
            (default ``tile``: the predictor's ``config.tile_size``; ``tile_overlap``: ``overlap``).
        resume: keep outputs that exist, and windows saved by an earlier, interrupted run.
        ngff: also write the labels as an OME-NGFF label image, ``<out>/<name>_cells.ome.zarr``
            (:mod:`ancis_fast.io.ngff`: a pyramid under ``labels/cells``, which napari and
            ome-zarr-py open as labels; for an OME-Zarr input it points at the input).
        background: ``"dark"`` (fluorescence) or ``"bright"`` (bright-field): segment only the
            windows where Otsu's threshold on a low-resolution view finds tissue
            (:mod:`ancis_fast.background`; ``ImageResult.skipped`` counts the others);
            ``None`` (default): segment every window.
        keep_instances: also load every stitched cell into ``ImageResult.instances`` (the
            client then holds all masks: for checks on images of modest size).
    Returns:
        an :class:`ImageResult`; when some windows failed, no outputs are written (the
        windows that worked are kept for ``resume``).
    """
    started = time.perf_counter()
    if background not in (None,) + BACKGROUNDS:
        raise ValueError(f"background={background!r}; expected None (segment every window) or one of {BACKGROUNDS}")
    spec = predictor if isinstance(predictor, PredictorSpec) else PredictorSpec.of(predictor)
    source = open_image(path)
    name = name or source.name
    result = ImageResult(name)
    labels_path, table_path = image_outputs(out, name)
    outputs = [labels_path, table_path] + ([ngff_path(out, name)] if ngff else [])
    if any(p.resolve() == Path(source.path).resolve() for p in outputs):
        raise ValueError(f"an output of {source.path!r} would replace it; give another output folder or name")
    if resume and labels_path.exists() and table_path.exists() and (not ngff or ngff_path(out, name).exists()):
        result.labels, result.table, result.already_done = labels_path, table_path, True
        result.ngff = ngff_path(out, name) if ngff else None
        return result
    height, width = source.shape[:2]
    tile = tile or _tile_size(spec)
    tile_overlap = overlap if tile_overlap is None else tile_overlap
    result.block, label_chunks = _layout(source.chunks, block, tile - tile_overlap)
    try:
        scale = conversion_range(client, source, _chunk_windows(height, width, label_chunks), _normalization(spec))
    except BlocksFailed as exc:  # an unreadable block: no whole-image statistics, nothing to segment
        result.failed, result.seconds = exc.failed, time.perf_counter() - started
        return result
    result.timings["statistics"] = time.perf_counter() - started
    window = result.block + overlap
    windows = [(y, min(y + window, height), x, min(x + window, width))
               for y in tile_starts(height, window, overlap) for x in tile_starts(width, window, overlap)]
    saved = {w: Path(out) / f"{name}.blocks" / f"{_window_name(w)}.pkl" for w in windows}
    todo = [w for w in windows if not (resume and saved[w].exists())]
    result.blocks, result.reused = len(windows), len(windows) - len(todo)
    if background is not None and todo:
        try:
            todo = _skip_background(client, source, todo, label_chunks, scale, background, saved, result)
        except BlocksFailed as exc:
            result.failed, result.seconds = exc.failed, time.perf_counter() - started
            return result
    worker_spec = spec.with_options(normalize="none") if spec.factory is None else spec  # blocks come as 8-bit
    futures = client.map(_segment_window, [worker_spec] * len(todo), [source] * len(todo), todo, [scale] * len(todo),
                         [tile] * len(todo), [tile_overlap] * len(todo), [saved[w] for w in todo], pure=False)
    result.failed = _wait(client, futures, [f"{name} {_window_name(w)}" for w in todo], progress)
    result.timings["blocks"] = time.perf_counter() - started - sum(result.timings.values())
    if not result.failed:
        _write_image_outputs(client, result, saved, (height, width), window, overlap, label_chunks, labels_path,
                             table_path, ngff_path(out, name) if ngff else None, source, keep_instances)
    result.seconds = time.perf_counter() - started
    return result


def _skip_background(client, source: ImageSource, todo: List[Tuple[int, int, int, int]], chunks: Tuple[int, int],
                     scale: Optional[Tuple[float, float]], background: str,
                     saved: Dict[Tuple[int, int, int, int], Path], result: ImageResult) -> List[Tuple[int, int, int, int]]:
    """The windows of ``todo`` that hold tissue (:mod:`ancis_fast.background`); the others
    are saved as segmented with no cell, and counted in ``result.skipped``."""
    step = time.perf_counter()
    size = source.shape[:2]
    factor = view_factor(size)
    parts = _chunk_windows(size[0], size[1], chunks)
    pieces = client.map(_thumbnail_piece, [source] * len(parts), parts, [scale] * len(parts), [factor] * len(parts),
                        pure=False)
    failed = _wait(client, pieces, [f"{source.name} low-resolution view of {_window_name(c)}" for c in parts], False)
    if failed:
        raise BlocksFailed(failed)
    mask = tissue_mask(assemble(client.gather(pieces), parts, size, factor), background)
    keep = windows_with_tissue(mask, factor, todo)
    for window, tissue in zip(todo, keep):
        if not tissue:
            with atomic_path(saved[window]) as tmp:
                empty = Instances.empty((window[1] - window[0], window[3] - window[2]))
                tmp.write_bytes(pickle.dumps(empty, protocol=pickle.HIGHEST_PROTOCOL))
    result.skipped = len(todo) - sum(keep)
    result.timings["background"] = time.perf_counter() - step
    return [w for w, tissue in zip(todo, keep) if tissue]


def _thumbnail_piece(source: ImageSource, chunk: Tuple[int, int, int, int], scale: Optional[Tuple[float, float]],
                     factor: int) -> np.ndarray:
    """Worker task: one chunk of the low-resolution view (8-bit as the windows are)."""
    pixels = source.read(*chunk)
    return thumbnail_piece(to_uint8(pixels, Normalization("none")) if scale is None else _scale_to_uint8(pixels, *scale),
                           factor)


def _layout(chunks: Tuple[int, int], block: Optional[int], stride: int) -> Tuple[int, Tuple[int, int]]:
    """``(block, label chunks)``: the block stride (given, or the multiple of the tiles' ``stride``
    nearest the input's chunk side) and the labels' chunks (the input's, unless they are thin strips)."""
    usable = min(chunks) >= MIN_LABEL_CHUNK
    if block is None:
        block = max(1, round((max(chunks) if usable else DEFAULT_BLOCK) / stride)) * stride
    return block, (chunks if usable else (block, block))


def _write_image_outputs(client, result: ImageResult, saved: Dict[Tuple[int, int, int, int], Path],
                         size: Tuple[int, int], window: int, overlap: int, label_chunks: Tuple[int, int],
                         labels_path: Path, table_path: Path, ngff_root: Optional[Path], source: ImageSource,
                         keep_instances: bool) -> None:
    """Stitch the saved windows and write labels and table, all on the workers (see
    :mod:`ancis_fast.distributed_stitch`); drop the saved windows. Failed steps are
    recorded in ``result.failed`` and leave no outputs."""
    step = time.perf_counter()
    windows = tile_windows(size[0], size[1], window, overlap)
    by_origin = {(w[0], w[2]): path for w, path in saved.items()}
    found = [by_origin[(w[0], w[1])] for w in windows]
    work = found[0].parent / "stitch"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stitched = _stitch_on_workers(client, result, found, windows, size, work)
    if stitched is None:
        return
    total, reach = stitched
    result.timings["stitch"], step = time.perf_counter() - step, time.perf_counter()
    if not _write_labels_on_workers(client, result, size, label_chunks, total, reach, work, labels_path, ngff_root,
                                    source, lambda: write_table(table_path, work, len(windows))):
        return
    result.instances = load_cells(work, len(windows), size) if keep_instances else None
    shutil.rmtree(work.parent, ignore_errors=True)
    result.timings["write"] = time.perf_counter() - step
    result.labels, result.table, result.ngff, result.cells = labels_path, table_path, ngff_root, total


def _run_tasks(client, result: ImageResult, task: Callable[..., Any], *columns: Sequence[Any], names: Sequence[str],
               what: str) -> Optional[list]:
    """``client.map(task, *columns)``, waited for; ``None`` (and ``result.failed`` set) when
    some task failed."""
    futures = client.map(task, *columns, pure=False)
    result.failed = _wait(client, futures, [f"{name} ({what})" for name in names], False)
    return None if result.failed else futures


def _stitch_on_workers(client, result: ImageResult, found: List[Path], windows: List[Tuple[int, int, int, int]],
                       size: Tuple[int, int], work: Path) -> Optional[Tuple[int, list]]:
    """Sort out each window, decide the seams group by group, number each window's cells
    (see :mod:`ancis_fast.distributed_stitch`); ``(cells, each window's cells' extent)``,
    or ``None`` when a task failed."""
    count = len(windows)
    names = [f"{result.name} {_window_name((w[0], w[2], w[1], w[3]))}" for w in windows]
    sorted_out = _run_tasks(client, result, sort_out_window, found, range(count), [windows] * count, [size] * count,
                            [work] * count, names=names, what="seams")
    if sorted_out is None:
        return None
    settled, extents = zip(*client.gather(sorted_out))
    groups = seam_groups(extents)
    resolved = _run_tasks(client, result, resolve_group, groups, range(len(groups)), [work] * len(groups),
                          names=[f"{result.name} seam group {g}" for g in range(len(groups))], what="seams")
    if resolved is None:
        return None
    won: List[List[Tuple[str, int]]] = [[] for _ in windows]
    for kept in client.gather(resolved):
        for k, part in kept.items():
            won[k].append(part)
    cells = np.array(settled, np.int64) + np.array([sum(n for _, n in parts) for parts in won], np.int64)
    firsts = (1 + np.concatenate([[0], np.cumsum(cells)[:-1]])).tolist()
    numbered = _run_tasks(client, result, number_window, range(count), firsts, [[p for p, _ in parts] for parts in won],
                          [size] * count, [work] * count, names=names, what="ids")
    return None if numbered is None else (int(cells.sum()), client.gather(numbered))


def _write_labels_on_workers(client, result: ImageResult, size: Tuple[int, int], label_chunks: Tuple[int, int],
                             total: int, reach: list, work: Path, labels_path: Path, ngff_root: Optional[Path],
                             source: ImageSource, write_table: Callable[[], None]) -> bool:
    """Paint the plain labels and the NGFF pyramid chunk by chunk on the workers (beside
    their final paths), then ``write_table()`` and rename them into place; ``False`` when
    a task failed (nothing is left)."""
    import zarr

    dtype = np.uint16 if total <= np.iinfo(np.uint16).max else np.uint32
    labels_tmp = Path(tempfile.mkdtemp(prefix=f".{labels_path.name}.", dir=labels_path.parent))
    ngff_tmp = Path(tempfile.mkdtemp(prefix=f".{ngff_root.name}.", dir=ngff_root.parent)) if ngff_root else None
    try:
        zarr.open_array(str(labels_tmp), mode="w", shape=size, chunks=label_chunks, dtype=dtype)
        levels = [str(labels_tmp)] + (_create_ngff(ngff_tmp, size, label_chunks, dtype, source) if ngff_tmp else [])
        chunks = _chunk_windows(size[0], size[1], label_chunks)
        if _run_tasks(client, result, paint_chunk, [levels[:2]] * len(chunks), chunks,
                      [chunk_cells(c, reach, work) for c in chunks],
                      names=[f"{result.name} labels of {_window_name(c)}" for c in chunks], what="labels") is None:
            return False
        for finer, coarser in zip(levels[1:], levels[2:]):
            parts = level_chunks(coarser)
            if _run_tasks(client, result, downsample_chunk, [finer] * len(parts), [coarser] * len(parts), parts,
                          names=[f"{result.name} {Path(coarser).name} {_window_name(c)}" for c in parts],
                          what="pyramid") is None:
                return False
        write_table()
        for tmp, final in ((labels_tmp, labels_path), (ngff_tmp, ngff_root)):
            if tmp is not None:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
        return True
    finally:
        for tmp in (labels_tmp, ngff_tmp):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _create_ngff(root: Path, size: Tuple[int, int], chunks: Tuple[int, int], dtype: type,
                 source: ImageSource) -> List[str]:
    """The empty NGFF label pyramid of ``source``'s labels: as many levels as an OME-Zarr
    input has (pointing at it, with its pixel size), else halved down to one chunk."""
    levels = source_levels(source.path)
    if levels is None:
        return create_label_image(root, size, chunks, dtype)
    return create_label_image(root, size, chunks, dtype, levels, source_pixel_size(source.path, source.component),
                              Path(source.path))


def _normalization(spec: PredictorSpec) -> Normalization:
    options = dict(spec.options)
    if spec.factory is None:
        return Normalization(options.get("normalize", "auto"), tuple(options.get("percentiles", (1.0, 99.8))))
    return worker_predictor(spec).config.normalization


def _tile_size(spec: PredictorSpec) -> int:
    options = dict(spec.options)
    if spec.factory is None:
        return PredictorConfig(**{k: v for k, v in options.items() if k in FIELDS}).tile_size
    return worker_predictor(spec).config.tile_size


def _window_name(window: Tuple[int, int, int, int]) -> str:
    y0, y1, x0, x1 = window
    return f"block_y{y0}-{y1}_x{x0}-{x1}"


def _segment_window(spec: PredictorSpec, source: ImageSource, window: Tuple[int, int, int, int],
                    scale: Optional[Tuple[float, float]], tile: int, overlap: int, save: Path) -> int:
    """Worker task: segment one window (converted to 8-bit with the whole image's ``scale``),
    save its Instances (window pixels) to ``save``; returns the cell count."""
    pixels = source.read(*window)
    image8 = to_uint8(pixels, Normalization("none")) if scale is None else _scale_to_uint8(pixels, *scale)
    found = worker_predictor(spec).predict(image8, tile=tile, overlap=overlap)
    with atomic_path(save) as tmp:
        tmp.write_bytes(pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL))
    return len(found)


# ------------------------------------------------------------------ many files

@dataclass
class FileResult:
    """One input of :func:`segment_files`: frames segmented and skipped, cells, error."""

    path: str
    frames: int = 0
    skipped: int = 0
    cells: int = 0
    error: str = ""


def segment_file(predictor: Any, path: PathLike, out: PathLike, stem: str, save: Sequence[str] = DEFAULT_SAVE,
                 label_format: str = "tif", tile: Optional[int] = None, overlap: int = 64,
                 resume: bool = False) -> FileResult:
    """Segment every frame of one file with ``predictor`` and write the outputs of
    ``ancis-fast predict`` (``<out>/<stem><frame suffix>_labels.tif`` ...); with ``resume``
    a frame whose outputs all exist is skipped. A bad input (``ValueError``/``OSError``)
    is recorded in ``error``; the frames finished before it are kept."""
    result = FileResult(str(path))
    try:
        for suffix, image in iter_frames(path):
            name = stem + suffix
            if resume and all(p.exists() for p in output_paths(out, name, save, label_format).values()):
                result.skipped += 1
                continue
            instances = predictor.predict(image, tile=tile, overlap=overlap)
            bgr8 = to_bgr8(image, predictor.config.normalization) if "overlay" in save else None
            write_instances(instances, out, name, save, bgr8, label_format)
            result.frames, result.cells = result.frames + 1, result.cells + len(instances)
    except (ValueError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _segment_file_task(spec: PredictorSpec, *args: Any, **kwargs: Any) -> FileResult:
    return segment_file(worker_predictor(spec), *args, **kwargs)


def segment_files(client, paths: Sequence[PathLike], out: PathLike,
                  predictor: Union[PredictorSpec, Mapping[str, Any], None] = None, *,
                  stems: Optional[Sequence[str]] = None, save: Sequence[str] = DEFAULT_SAVE,
                  label_format: str = "tif", tile: Optional[int] = None, overlap: int = 64, resume: bool = False,
                  progress: bool = False) -> List[FileResult]:
    """Segment many image files on the cluster of ``client``, one task per file, writing
    what ``ancis-fast predict`` writes (see :func:`segment_file`). ``stems``: output names
    (default: :func:`ancis_fast.io.writers.output_stems`). Returns one :class:`FileResult` per path,
    in order; a task that failed outside the file's own errors (e.g. its worker died too
    often) has ``error`` set too."""
    from .io.writers import output_stems

    spec = predictor if isinstance(predictor, PredictorSpec) else PredictorSpec.of(predictor)
    paths = [Path(p).resolve() for p in paths]
    stems = list(stems) if stems is not None else output_stems(paths)
    out = Path(out).resolve()
    futures = [client.submit(_segment_file_task, spec, path, out, stem, tuple(save), label_format, tile, overlap,
                             resume, pure=False) for path, stem in zip(paths, stems)]
    failed = dict(_wait(client, futures, [str(p) for p in paths], progress))
    return [FileResult(str(p), error=failed[str(p)]) if str(p) in failed else f.result()
            for p, f in zip(paths, futures)]


def _wait(client, futures: list, names: List[str], progress: bool) -> List[Tuple[str, str]]:
    """Wait for every task (with dask's progress bar); ``(name, error)`` of those that raised."""
    from distributed import progress as progress_bar, wait

    if progress and futures:
        progress_bar(futures)
    wait(futures)
    return [(name, f"{type(f.exception()).__name__}: {f.exception()}")
            for name, f in zip(names, futures) if f.status == "error"]


# ------------------------------------------------------------------ command line

def client_for(scheduler: Optional[str] = None, workers: Optional[int] = None):
    """A ``distributed.Client`` of the cluster at ``scheduler``, or of a new
    ``LocalCluster`` of ``workers`` processes with one thread each (closed with the client)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
    client = Client(cluster)
    client._ancis_cluster = cluster  # closed by close_client
    return client


def close_client(client) -> None:
    cluster = getattr(client, "_ancis_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def split_inputs(inputs: Iterable[str]) -> Tuple[List[str], List[str]]:
    """``(huge images, other inputs)``: zarr folders, and TIFFs of one 2-D image longer than
    :data:`HUGE_TIFF_ABOVE` px, are segmented in blocks; the rest as files."""
    huge, other = [], []
    for item in inputs:
        path = Path(item)
        if is_zarr(path) or (path.suffix.lower() in (".tif", ".tiff") and path.is_file() and _huge_tiff(path)):
            huge.append(item)
        else:
            other.append(item)
    return huge, other


def _huge_tiff(path: Path) -> bool:
    try:
        source = _tiff_source(path)
        return max(source.shape[:2]) > HUGE_TIFF_ABOVE and set(source.axes) <= set("yxc")
    except Exception:  # left to the file path, which reports a damaged TIFF by name
        return False


def predict_command(args, predictor_options: Dict[str, Any]) -> int:
    """``ancis-fast predict ... --scheduler ADDRESS | --workers N``: huge images in
    blocks, other inputs one file per task; prints the dashboard link, progress and a summary."""
    import sys

    from .data.layouts import expand_datasets
    from .io.readers import find_images

    started = time.perf_counter()
    huge, other = split_inputs(args.inputs)
    try:
        paths = find_images(expand_datasets(other), recursive=args.recursive) if other else []
        for item in huge:
            open_image(item)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = client_for(args.scheduler, args.workers)
    failures: List[str] = []
    try:
        if not args.quiet:
            print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        spec = PredictorSpec.of(predictor_options)
        for item in huge:
            done = segment_image(client, item, args.out, spec, overlap=args.overlap,
                                 tile=args.tile,
                                 resume=args.resume, progress=not args.quiet, background=args.background)
            failures += [f"{n}: {e}" for n, e in done.failed]
            print(f"{item}: " + (f"{done.blocks} block(s) failed" if done.failed else "already done" if done.already_done
                                 else f"{done.cells} cell(s) in {done.blocks} block(s) ({done.reused} reused"
                                      f"{f', {done.skipped} without tissue' if done.skipped else ''}), "
                                      f"{done.seconds:.1f} s -> {done.labels}, {done.table}, {done.ngff}"),
                  file=sys.stderr)
        results = segment_files(client, paths, args.out, spec, save=args.save, label_format=args.label_format,
                                tile=args.tile, overlap=args.overlap, resume=args.resume, progress=not args.quiet)
    finally:
        close_client(client)
    failures += [f"{r.path}: {r.error}" for r in results if r.error]
    if paths:
        frames, skipped = sum(r.frames for r in results), sum(r.skipped for r in results)
        print(f"{len(paths) - sum(bool(r.error) for r in results)}/{len(paths)} input(s) done: {frames} frame(s) "
              f"segmented{f', {skipped} already done' if skipped else ''}, {sum(r.cells for r in results)} cell(s), "
              f"{time.perf_counter() - started:.1f} s; outputs in {args.out}", file=sys.stderr)
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0
