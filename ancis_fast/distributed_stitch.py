"""A huge image's windows stitched on the Dask workers, and its labels written by them.

The client never holds the masks, only a box per contested cell while the seams are
grouped. After every window is segmented (:func:`ancis_fast.distributed.segment_image`):

1. each window's cells are sorted out on a worker (:meth:`ancis_fast.tiling.WindowGrid.sort_out`):
   those that reach no other window are kept as they are; the rest (*contested*) are
   saved, and their boxes sent to the client;
2. the client groups the contested cells whose boxes overlap (:func:`seam_groups`; a
   group lies along one seam, a few windows), and the workers decide each group with
   :func:`ancis_fast.tiling.best_views` (the rules of :func:`ancis_fast.tiling.stitch`:
   any grouping that keeps overlapping boxes together decides each cell as one pass over
   the whole image would);
3. each window numbers the cells it owns (a kept cell belongs to the window its kept view
   comes from) from an offset the client adds up, and writes its rows of the table;
4. each label chunk is painted by a worker from the cells of the windows that reach it
   (into the plain label array and level 0 of the OME-NGFF pyramid, :mod:`ancis_fast.io.ngff`),
   and the workers then fill the pyramid's coarser levels chunk by chunk.

**Id order**: windows row by row (the order of :func:`ancis_fast.tiling.tile_windows`),
and within a window by descending score; ids run 1..N without gaps and the table lists
them in order. Where masks overlap, the higher score is on top (ties: the lower id).
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .instances import CSV_COLUMNS, Instances
from .io.writers import atomic_path
from .masks import PatchMasks, pack_patches, unpack_patches
from .tiling import BoxIndex, Candidate, Window, WindowGrid, as_instances, best_views, window_candidates

Chunk = Tuple[int, int, int, int]  # (y0, y1, x0, x1) of a label chunk


def _save(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _load(path: Union[str, Path]) -> Any:
    return pickle.loads(Path(path).read_bytes())


def _save_candidates(path: Path, candidates: Sequence[Candidate]) -> None:
    """Candidates as a few arrays (one buffer for all patches): quick to pickle."""
    shapes, pixels = pack_patches([c.patch for c in candidates])
    _save(path, {"shapes": shapes, "pixels": pixels,
                 "boxes": np.array([c.box for c in candidates], np.float32).reshape(-1, 4),
                 **{field: np.array([getattr(c, field) for c in candidates], kind) for field, kind in _FIELDS}})


def _load_candidates(path: Union[str, Path]) -> List[Candidate]:
    saved = _load(path)
    patches = unpack_patches(saved["shapes"], saved["pixels"])
    return [Candidate(float(saved["score"][i]), saved["boxes"][i], patch, tuple(int(v) for v in saved["origin"][i]),
                      int(saved["label"][i]), int(saved["tile"][i]), float(saved["margin"][i]), int(saved["rank"][i]))
            for i, patch in enumerate(patches)]


_FIELDS = (("score", np.float64), ("origin", np.int64), ("label", np.int64), ("tile", np.int64),
           ("margin", np.float64), ("rank", np.int64))


# ------------------------------------------------------------------ 1. sorting out each window

def sort_out_window(found_path: Path, index: int, windows: Sequence[Window], image_size: Tuple[int, int],
                    work: Path) -> Tuple[int, np.ndarray]:
    """Worker task: window ``index``'s cells (saved Instances in window pixels) as
    candidates; saves the settled and the contested ones; returns the settled count and
    the contested ones' mask extents ``[n, 4]`` ``(y1, x1, y2, x2)``."""
    found = _load(found_path)
    candidates = window_candidates(found, index, windows[index], image_size)
    settled, contested = WindowGrid(windows, image_size).sort_out(candidates)
    _save_candidates(work / f"{index}.settled.pkl", settled)
    _save_candidates(work / f"{index}.contested.pkl", contested)
    return len(settled), np.array([c.extent for c in contested], np.int64).reshape(-1, 4)


# ------------------------------------------------------------------ 2. the seams, group by group

def seam_groups(extents: Sequence[np.ndarray]) -> List[Dict[int, np.ndarray]]:
    """The contested candidates (``extents[k]``: window ``k``'s boxes) in groups such that
    two whose boxes overlap share a group: connected components of box overlap, those whose
    lowest window is the same merged into one group. Each group maps a window to the
    positions of its candidates in ``extents[window]``."""
    windows = np.concatenate([np.full(len(e), k, np.int64) for k, e in enumerate(extents)] + [np.zeros(0, np.int64)])
    positions = np.concatenate([np.arange(len(e)) for e in extents] + [np.zeros(0, np.int64)])
    boxes = np.concatenate([np.asarray(e, np.int64).reshape(-1, 4) for e in extents] + [np.zeros((0, 4), np.int64)])
    parent = np.arange(len(boxes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    index = BoxIndex(2 * int(np.median(sides)) + 1 if len(sides) else 1)
    for i, box in enumerate(boxes):
        for j in index.overlapping(box):
            a, b = root(i), root(int(j))
            parent[max(a, b)] = min(a, b)
        index.add(i, box)
    roots = np.array([root(i) for i in range(len(boxes))], np.int64)
    lowest = np.full(len(boxes), np.iinfo(np.int64).max)
    np.minimum.at(lowest, roots, windows)
    home = lowest[roots]
    groups = []
    for window in np.unique(home):
        members = np.flatnonzero(home == window)
        groups.append({int(k): positions[members[windows[members] == k]] for k in np.unique(windows[members])})
    return groups


def resolve_group(group: Dict[int, np.ndarray], number: int, work: Path) -> Dict[int, Tuple[str, int]]:
    """Worker task: decide one group's candidates (:func:`~ancis_fast.tiling.best_views`);
    saves the kept ones of each window ``k`` to their own file; returns ``{k: (path, count)}``."""
    candidates: List[Candidate] = []
    for window, members in group.items():
        contested = _load_candidates(work / f"{window}.contested.pkl")
        candidates += [contested[j] for j in members]
    kept: Dict[int, List[Candidate]] = {}
    for cand in best_views(candidates):
        kept.setdefault(cand.tile, []).append(cand)
    paths = {}
    for window, cells in kept.items():
        paths[window] = (str(work / f"group{number}.window{window}.pkl"), len(cells))
        _save_candidates(Path(paths[window][0]), cells)
    return paths


# ------------------------------------------------------------------ 3. ids and table rows, window by window

def number_window(index: int, first_id: int, resolved: Sequence[str], image_size: Tuple[int, int],
                  work: Path) -> Optional[Tuple[int, int, int, int]]:
    """Worker task: window ``index``'s kept cells (settled, and won at the seams) numbered
    from ``first_id`` by descending score; saves them and their table rows; returns the
    extent ``(y1, x1, y2, x2)`` their masks cover (``None``: no cell)."""
    cells = _load_candidates(work / f"{index}.settled.pkl")
    for path in resolved:
        cells += _load_candidates(path)
    found = as_instances(cells, image_size)
    patches = found.mask_patches
    _save(work / f"{index}.cells.pkl", {"ids": np.arange(first_id, first_id + len(found), dtype=np.int64),
                                        "scores": found.scores, "boxes": found.boxes, "labels": found.labels,
                                        "masks": patches})
    with atomic_path(work / f"{index}.rows.csv") as tmp:
        tmp.write_text(found.to_csv(first_id, header=False))
    if not len(found):
        return None
    ends = patches.origins + np.array([p.shape for p in patches.patches], np.int64)
    return (int(patches.origins[:, 0].min()), int(patches.origins[:, 1].min()), int(ends[:, 0].max()),
            int(ends[:, 1].max()))


def write_table(path: Path, work: Path, windows: int) -> None:
    """The windows' rows, in window order (so in id order), under one header; atomic."""
    with atomic_path(path) as tmp, open(tmp, "w") as table:
        table.write(",".join(CSV_COLUMNS) + "\n")
        for index in range(windows):
            with open(work / f"{index}.rows.csv") as rows:
                shutil.copyfileobj(rows, table)


# ------------------------------------------------------------------ 4. label chunks

def paint_chunk(arrays: Sequence[str], chunk: Chunk, cell_files: Sequence[str]) -> None:
    """Worker task: paint the label chunk ``chunk`` of the zarr arrays at ``arrays`` (the
    plain labels, the NGFF pyramid's level 0) from the cells saved in ``cell_files``
    (lowest score first, ties: higher id first, so the best ends on top)."""
    import zarr

    y0, y1, x0, x1 = chunk
    canvas = np.zeros((y1 - y0, x1 - x0), zarr.open_array(arrays[0], mode="r").dtype)
    hits = []
    for path in cell_files:
        cells = _load(path)
        origins, patches = cells["masks"].origins, cells["masks"].patches
        ends = origins + np.array([p.shape for p in patches], np.int64).reshape(-1, 2)
        for i in np.flatnonzero((origins[:, 0] < y1) & (ends[:, 0] > y0) & (origins[:, 1] < x1) & (ends[:, 1] > x0)):
            hits.append((float(cells["scores"][i]), -int(cells["ids"][i]), tuple(origins[i]), patches[i]))
    for _, negative_id, (py, px), patch in sorted(hits, key=lambda h: h[:2]):
        top, left = max(py, y0), max(px, x0)
        bottom, right = min(py + patch.shape[0], y1), min(px + patch.shape[1], x1)
        piece = patch[top - py : bottom - py, left - px : right - px]
        canvas[top - y0 : bottom - y0, left - x0 : right - x0][piece] = -negative_id
    for path in arrays:
        zarr.open_array(path, mode="r+")[y0:y1, x0:x1] = canvas


def chunk_cells(chunk: Chunk, extents: Sequence[Optional[Tuple[int, int, int, int]]], work: Path) -> List[str]:
    """The cells files of the windows whose cells reach ``chunk`` (``extents``: each
    window's, from :func:`number_window`)."""
    y0, y1, x0, x1 = chunk
    return [str(work / f"{k}.cells.pkl") for k, e in enumerate(extents)
            if e is not None and e[0] < y1 and y0 < e[2] and e[1] < x1 and x0 < e[3]]


def load_cells(work: Path, windows: int, image_size: Tuple[int, int]) -> Instances:
    """All numbered cells as one Instances (by descending score, ties by id), their label
    ids in ``meta["ids"]`` (for checks on small images: the client then holds every mask)."""
    parts = [_load(work / f"{k}.cells.pkl") for k in range(windows)]
    ids = np.concatenate([part["ids"] for part in parts])
    if not len(ids):
        found = Instances.empty(image_size)
    else:
        found = Instances(np.concatenate([part["boxes"] for part in parts]),
                          np.concatenate([part["scores"] for part in parts]),
                          PatchMasks.cat([part["masks"] for part in parts]),
                          np.concatenate([part["labels"] for part in parts]))
    order = np.lexsort((ids, -found.scores))
    found = found[order]
    found.meta["ids"] = ids[order]
    return found
