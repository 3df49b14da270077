"""One way through the code: one config, one backend registry, one stage interface for both
pipelines, one export-format table, and an import graph without circles whose layers only
import downwards."""
import ast
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import ancis_fast.predictor as predictor_module
from ancis_fast import Instances, Predictor, PredictorConfig
from ancis_fast.backends import BACKEND_CHOICES, REGISTRY, build
from ancis_fast.backends.precision import INT8, PRECISIONS
from ancis_fast.cli import config_overrides, make_parser
from ancis_fast.config import FIELDS, MODES, PRECISION_NAMES
from ancis_fast.export import FORMATS, export_predictor
from ancis_fast.pipeline.fast import FastPipeline
from ancis_fast.pipeline.preprocess import NORMALIZE_MODES, preprocess
from ancis_fast.pipeline.reference import ReferencePipeline
from ancis_fast.pipeline.stages import STAGES
from conftest import blob_image, matched_detections, paired_mask_ious

SIZE = (128, 128)
PACKAGE = Path(__file__).parents[1] / "ancis_fast"
# the release's detection limits: random weights otherwise give hundreds of near-tied cells
LIMITS = dict(input_size=SIZE, max_candidates=200, max_detections=500)


# ------------------------------------------------------------------ one config

def test_keywords_override_the_given_config(models):
    base = PredictorConfig(input_size=SIZE, conf_thresh=0.4)
    predictor = Predictor.from_models(*models, backend="reference", config=base, seg_thresh=0.6, normalize="minmax")
    assert predictor.config == PredictorConfig(input_size=SIZE, conf_thresh=0.4, seg_thresh=0.6, normalize="minmax")
    assert predictor.config.normalization.mode == "minmax" and base.seg_thresh == 0.5  # the given one is unchanged
    with pytest.raises(TypeError, match="conf_threshold.*PredictorConfig has input_size"):
        Predictor.from_models(*models, backend="reference", conf_threshold=0.4)


def test_config_round_trips_through_json():
    config = PredictorConfig(input_size=(256, 320), percentiles=(2, 98), zoom=2, crop_sizes=(16, 32))
    stored = json.loads(json.dumps(config.to_dict()))
    assert list(stored) == list(FIELDS) and PredictorConfig(**stored) == config
    assert stored == {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def test_cli_options_are_the_config_fields_with_its_defaults_and_choices():
    parser = make_parser()
    args = parser.parse_args(["predict", "x.png", "--out", "out"])
    assert PredictorConfig(**config_overrides(args)) == PredictorConfig()
    # --tile N gives predict() its tile size, for every image (tile_size: the size of automatic tiles)
    assert set(config_overrides(args)) == set(FIELDS) - {"percentiles", "prior_height", "crop_sizes", "tile_size"}
    changed = parser.parse_args(["predict", "x.png", "--out", "o", "--seg-thresh", "0.7", "--mode", "exact",
                                 "--zoom", "2", "--input-size", "256x320"])
    assert PredictorConfig(**config_overrides(changed)) == PredictorConfig(seg_thresh=0.7, mode="exact", zoom=2,
                                                                           input_size=(256, 320))
    choices = {a.dest: tuple(a.choices) for a in parser._subparsers._group_actions[0].choices["predict"]._actions
               if a.choices}
    assert choices["backend"] == BACKEND_CHOICES and choices["mode"] == MODES
    assert choices["precision"] == PRECISION_NAMES and choices["normalize"] == NORMALIZE_MODES
    assert PRECISION_NAMES == tuple(PRECISIONS) + (INT8,)  # every name has its dtype


# ------------------------------------------------------------------ one backend registry

def test_build_prepares_copies_and_leaves_the_models_alone(models):
    detector, segmenter = models
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    config = PredictorConfig(input_size=SIZE)
    assert build("reference", detector, segmenter, config, torch.device("cpu")) == (detector, segmenter)
    fast_detector, fast_segmenter = build("eager", detector, segmenter, config, torch.device("cpu"))
    assert fast_detector is not detector and fast_segmenter is not segmenter
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast_detector.modules())  # folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())
    assert all(torch.equal(v, before[k]) for k, v in detector.state_dict().items())
    with pytest.raises(ValueError, match="backend='onnx'"):
        build("onnx", detector, segmenter, config, torch.device("cpu"))
    assert BACKEND_CHOICES == ("auto",) + tuple(REGISTRY)


# ------------------------------------------------------------------ one stage interface

@pytest.mark.parametrize("backend, pipeline_type", [("reference", ReferencePipeline), ("eager", FastPipeline)])
def test_both_pipelines_take_a_batch_to_instances(models, backend, pipeline_type):
    predictor = Predictor.from_models(*models, backend=backend, config=PredictorConfig(zoom=1, **LIMITS))
    assert isinstance(predictor.pipeline, pipeline_type)
    images = [blob_image(seed=1), blob_image(120, 90, seed=2)]
    prepared = [preprocess(image, SIZE) for image in images]
    stages = []

    def timed(stage, fn, *args):
        stages.append(stage)
        return fn(*args)

    found = predictor.pipeline.run(torch.cat([p[0] for p in prepared]), [p[1] for p in prepared], timed)
    assert len(found) == 2 and all(isinstance(f, Instances) for f in found)
    assert {stage for stage in stages} == set(STAGES) - {"preprocess"}
    for image, got in zip(images, found):
        want = predictor.predict(image)
        assert got.image_size == image.shape[:2] and len(got) == len(want) > 0
        want = matched_detections(got, want, atol=1e-4)  # a batch of 2 against batches of 1
        assert paired_mask_ious(got, want).min() >= 0.98


def test_stream_segments_at_zoom_1_whatever_predict_does(models, monkeypatch):
    """predict() zooms as the config says; stream() never does (a live feed's cost is fixed),
    and its results say so and equal those of a predictor with zoom=1."""
    monkeypatch.setattr(predictor_module, "auto_zoom", lambda *args: 2.0)
    auto = Predictor.from_models(*models, backend="eager", config=PredictorConfig(**LIMITS))
    plain = Predictor.from_models(*models, backend="eager", config=PredictorConfig(zoom=1, **LIMITS))
    frames = [blob_image(seed=s) for s in range(2)]
    assert auto.predict(frames[0]).meta["zoom"] == 2.0
    for streamed, frame in zip(auto.stream(frames), frames):
        want = plain.predict(frame)
        assert streamed.meta["zoom"] == want.meta["zoom"] == 1.0
        np.testing.assert_array_equal(streamed.masks, want.masks)


# ------------------------------------------------------------------ one export-format table

def test_export_formats_drive_the_cli_and_the_checks(models, tmp_path):
    export = make_parser()._subparsers._group_actions[0].choices["export"]
    fmt = next(a for a in export._actions if a.dest == "format")
    assert tuple(fmt.choices) == tuple(FORMATS)
    predictor = Predictor.from_models(*models, backend="eager", config=PredictorConfig(**LIMITS))
    with pytest.raises(TypeError, match="batch_size"):
        export_predictor(predictor, tmp_path / "m.pt", format="torchscript", batch_size=2)
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_predictor(predictor, tmp_path / "m.pt", format="aoti")
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------ import graph

#: the package's layers, bottom first: a module may import from its own layer and those below,
#: never from above (keyed by the first part of the module name below ``ancis_fast``)
LAYERS = (
    ("ops", "models", "masks", "instances", "boxes"),
    ("config", "zoom", "pipeline", "tiling", "views", "io", "data", "streaming", "background"),
    ("backends",),
    ("predictor",),
    ("cli", "export", "export_cli", "distributed", "distributed_stitch", "evaluate", "train", "napari", "__main__"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    """``ancis_fast/pipeline/fast.py`` -> ``pipeline.fast``; a package's ``__init__`` is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(path: Path) -> set:
    """Every module of the package that ``path`` imports, at module level or inside functions
    (only ``if TYPE_CHECKING:`` blocks are left out), as names relative to the package
    (``pipeline.fast``); ``from .io import writers`` counts ``io`` and ``io.writers``."""
    name = _module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    here = [part for part in here if part]
    names = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            written = node.module.split(".") if node.module else []
            if node.level:
                module = here[: len(here) - node.level + 1] + written
            elif written[:1] == ["ancis_fast"]:
                module = written[1:]
            else:
                return
            if module:
                names.add(".".join(module))
            names.update(".".join(module + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("ancis_fast."))
        visit(node)

    visit(ast.parse(path.read_text()))
    return names


def _import_graph() -> dict:
    """``{module: modules it imports}`` over the whole package; importing ``a.b`` imports the
    package ``a`` too."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imported_names(path):
            parts = target.split(".")
            targets.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
        graph[name] = {t for t in targets & set(modules) if t != name and not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict):
    """One import circle of ``graph`` as a list of modules, or ``None``."""
    state = {}  # 1: on the current path, 2: finished

    def walk(node, path):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = walk(target, path + [target])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = walk(start, [start])
            if found:
                return found
    return None


def test_the_import_reader_sees_imports_inside_functions_and_skips_type_checking(tmp_path, monkeypatch):
    """The graph below is only as good as its reader: lazy imports must count (a lazy import
    that closes a circle hides two modules that are one concept), TYPE_CHECKING ones not."""
    package = tmp_path / "ancis_fast"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "__init__.py").write_text("from .b import thing\n")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n")
    (package / "a.py").write_text("import os\n\ndef f():\n    from .sub import b\n    import ancis_fast.c\n")
    (package / "c.py").write_text("def g():\n    from ancis_fast.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    graph = _import_graph()
    assert graph["a"] == {"sub", "sub.b", "c"} and graph["sub"] == {"sub.b"} and graph["sub.b"] == set()
    assert _cycle(graph) == ["a", "c", "a"]
    (package / "c.py").write_text("")
    assert _cycle(_import_graph()) is None


def test_no_import_circles_lazy_imports_included():
    assert _cycle(_import_graph()) is None


def test_layers_import_only_downwards():
    """ops, models, masks/instances at the bottom; pipeline, tiling, io (with config and the
    data sets) above; then backends, then the predictor; the commands, export, Dask and
    training on top. Every module has a layer, so a new one must be placed."""
    graph = _import_graph()
    layer = {name: LAYER_OF.get(name.split(".")[0]) for name in graph if name}
    assert [name for name, level in layer.items() if level is None] == []
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() if name
                    for target in targets if target and layer[target] > layer[name])
    assert upward == []
