"""The post-processing against waterz's own agglomeration of the same fragments: contacts written
to the RAG block by block, segment's hierarchy of super-blocks fed from it, relabel, and
waterz.agglomerate with the same scoring function, on data without ties."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import waterz
import yaml
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import NEAREST_OFFSETS, store_affinities, to_float
from neurosam.config import HIST_QUANT_50, HIST_QUANT_75, load_config
from neurosam.io.volumes import open_array
from neurosam.pipeline.run import run_pipeline
from neurosam.rag import open_rag
from pipeline_support import read_edges, read_segmentation

#: Fragments are the cells of this grid, cubes of CELL voxels a side, one cube per block: 48
#: blocks, and three levels of super-blocks along x.
CELLS = (2, 4, 6)
CELL = 4
VOXEL_SIZE = Coordinate(10, 10, 10)
THRESHOLDS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9]

MAX = "MaxAffinity<RegionGraphType, ScoreValue>"
MIN = "MinAffinity<RegionGraphType, ScoreValue>"
MEAN = "MeanAffinity<RegionGraphType, ScoreValue>"
QUANTILE_25 = "QuantileAffinity<RegionGraphType, 25, ScoreValue>"
HISTOGRAM_90 = "HistogramQuantileAffinity<RegionGraphType, 90, ScoreValue, 256>"
TWO = "Constant<RegionGraphType, 2>"
ONE = "Constant<RegionGraphType, 1>"

#: What the README says the hierarchy keeps exact: monotone functions of one of the maximum,
#: minimum, mean or a quantile of the affinities, composed with constants.
EXACT = {
    "hist_quant_50": HIST_QUANT_50,
    "hist_quant_75": HIST_QUANT_75,
    "quantile_25": f"OneMinus<{QUANTILE_25}>",
    "mean": f"OneMinus<{MEAN}>",
    "max": f"OneMinus<{MAX}>",
    "min": f"OneMinus<{MIN}>",
    "mean_halved": f"Divide<OneMinus<{MEAN}>, {TWO}>",
    "max_squared": f"Square<OneMinus<{MAX}>>",
    "max_inverted": f"Invert<Add<{ONE}, {MAX}>>",
    "histogram_doubled": f"Multiply<{TWO}, OneMinus<{HISTOGRAM_90}>>",
}
#: What it refuses, and where: region sizes when scoring functions are checked (the merge loop
#: keeps no sizes), other compositions when the run plans.
REFUSED = {
    "min_size": (f"Multiply<OneMinus<{MEAN}>, MinSize<RegionGraphType>>", "cannot be scored from the RAG's edge statistics"),
    "max_size": (
        "Divide<Subtract<MaxSize<RegionGraphType>, MinSize<RegionGraphType>>, Add<MaxSize<RegionGraphType>, MinSize<RegionGraphType>>>",
        "cannot be scored from the RAG's edge statistics",
    ),
    "two_affinities": (f"OneMinus<Add<{MEAN}, {MAX}>>", "exact only for a monotone function of one"),
    "contact_area": (f"OneMinus<Multiply<{MEAN}, ContactArea<RegionGraphType>>>", "exact only for a monotone function of one"),
}


def cell_affinities(rng: np.random.Generator) -> np.ndarray:
    """uint8 affinities that are 255 inside each cell, so that the watershed makes each cell one
    fragment, and below 255 across cell faces: each contact's smallest and largest values appear
    in no other contact, so no two fragment pairs share a maximum or a minimum, and with them no
    two edges ever share a maximum, minimum or quantile score; the rest of its values lie between."""
    shape = tuple(count * CELL for count in CELLS)
    affinities = np.full((3, *shape), 255, dtype=np.uint8)
    faces = [(axis, layer) for axis in range(3) for layer in range(1, CELLS[axis])]
    contacts = sum(int(np.prod(CELLS)) // CELLS[axis] for axis, _ in faces)
    extremes = rng.choice(np.arange(1, 255), size=(contacts, 2), replace=False)
    extremes.sort(axis=1)
    contact = 0
    for axis in range(3):
        affinities[(axis, *((slice(None),) * axis), 0)] = 0  # pairs with voxels outside the volume
        for layer in range(1, CELLS[axis]):
            plane = affinities[(axis, *((slice(None),) * axis), layer * CELL)]
            for cell in np.ndindex(*(count for a, count in enumerate(CELLS) if a != axis)):
                low, high = extremes[contact]
                values = rng.integers(low, high + 1, size=CELL * CELL)
                values[:2] = low, high
                plane[tuple(slice(c * CELL, (c + 1) * CELL) for c in cell)] = values.reshape(CELL, CELL)
                contact += 1
    return affinities


def prepared(directory, block_voxels) -> tuple[dict, np.ndarray, np.ndarray]:
    """Inputs and a config base in ``directory``, with the fragments and contacts done (SQLite
    RAG): the config base, the float affinities and the fragments."""
    affinities = cell_affinities(np.random.default_rng(0))
    roi = Roi((0, 0, 0), Coordinate(affinities.shape[1:]) * VOXEL_SIZE)
    store_affinities(str(directory / "inputs.zarr/affinities"), affinities / 255.0, roi, VOXEL_SIZE, NEAREST_OFFSETS)
    base = {
        "work_dir": str(directory / "work"),
        "datasets": {
            "affinities": str(directory / "inputs.zarr/affinities"),
            "fragments": str(directory / "out.zarr/fragments"),
            "segmentation": str(directory / "out.zarr/segmentation"),
        },
        "blocks": {"block_size": list(VOXEL_SIZE * Coordinate(block_voxels))},
        "workers": {"count": 2},
        "rag": {"url": f"sqlite:///{directory / 'rag.db'}"},
    }
    run_pipeline(write(directory, base, "hist_quant_50", HIST_QUANT_50), until="contacts", echo_progress=False)
    fragments = open_array(base["datasets"]["fragments"])
    return base, to_float(affinities), fragments[fragments.roi]


def cell_labels(shape) -> np.ndarray:
    return (np.ravel_multi_index(np.indices(shape) // CELL, CELLS) + 1).astype(np.uint64)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """A block per cell: each cell is one fragment, and the watershed cuts no basin."""
    directory = tmp_path_factory.mktemp("cells")
    base, affinities, fragments = prepared(directory, (CELL,) * 3)
    assert len(np.unique(fragments)) == np.prod(CELLS) and same_partition(fragments, cell_labels(fragments.shape)), "a cell is not one fragment"
    with open_rag(base["rag"]["url"]) as rag:
        edges = read_edges(rag)
    assert len(edges["u"]) == sum(int(np.prod(CELLS)) // c * (c - 1) for c in CELLS) and not edges["claimed_area"].any()
    return directory, base, affinities, fragments


@pytest.fixture(scope="module")
def cut_cells(tmp_path_factory):
    """Blocks of half a cell along x: each cell is two fragments, one basin that a block face
    cut, which the claims mark; waterz is given the cells, as one volume's watershed makes them."""
    directory = tmp_path_factory.mktemp("cut_cells")
    base, affinities, fragments = prepared(directory, (CELL, CELL, CELL // 2))
    cells = cell_labels(fragments.shape)
    assert len(np.unique(fragments)) == 2 * np.prod(CELLS) and same_partition(fragments, cells * 2 + np.indices(fragments.shape)[2] // (CELL // 2) % 2)
    with open_rag(base["rag"]["url"]) as rag:
        edges = read_edges(rag)
    forced = (edges["claimed_area"] > 0) & (2 * edges["claimed_area"] >= edges["contact_area"])
    assert forced.sum() == np.prod(CELLS)
    return directory, base, affinities, cells


def write(directory, base: dict, name: str, function: str):
    path = directory / f"{name}.yaml"
    config = {**base, "segment": {"scoring_functions": {name: function}, "scoring_function": name, "thresholds": THRESHOLDS}}
    path.write_text(yaml.safe_dump(config))
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the two label volumes split the voxels alike: their ids correspond one to one."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def assert_reproduces_waterz(prepared_dir, name: str) -> dict:
    """At every threshold the run's segmentation is waterz's, identically, and the thresholds
    range from every cell apart to merges across super-blocks of every level; the summary."""
    directory, base, affinities, fragments = prepared_dir
    path = write(directory, base, name, EXACT[name])
    summary = run_pipeline(path, echo_progress=False)
    assert all(counts["skipped_as_done"] == counts["blocks"] for task, counts in summary["tasks"].items() if task.startswith(("fragments", "contacts")))
    config = load_config(path)
    theirs = waterz.agglomerate(affinities, THRESHOLDS, fragments=fragments.copy(), scoring_function=EXACT[name])
    counts = []
    for threshold, expected in zip(THRESHOLDS, theirs):
        ours = read_segmentation(config, threshold)
        assert same_partition(ours, expected), f"{name} at {threshold}: {len(np.unique(ours))} segments, waterz {len(np.unique(expected))}"
        counts.append(len(np.unique(ours)))
    assert len(set(counts)) >= 3 and min(counts) < np.prod(CELLS) / 4, counts
    return summary


def super_blocks(summary: dict) -> list[int]:
    """Super-blocks per level, upwards."""
    return [counts["blocks"] for task, counts in summary["tasks"].items() if "-up" in task]


@pytest.mark.parametrize("name", list(EXACT))
def test_global_agglomeration_reproduces_waterz(cells, name):
    assert super_blocks(assert_reproduces_waterz(cells, name)) == [6, 2, 1]


@pytest.mark.parametrize("name", ["hist_quant_50", "mean", "min", "max_inverted"])
def test_basins_cut_by_block_faces_are_rejoined_as_one_volume_has_them(cut_cells, name):
    """The pieces join before any merge, and their pairs with a fragment beyond fold into one:
    waterz's segmentation of the uncut cells, identically."""
    assert super_blocks(assert_reproduces_waterz(cut_cells, name)) == [12, 3, 2, 1]


@pytest.mark.parametrize("name", list(REFUSED))
def test_scoring_functions_the_hierarchy_cannot_keep_exact_are_refused(cells, name):
    directory, base, _, _ = cells
    function, message = REFUSED[name]
    path = write(directory, base, name, function)
    result = subprocess.run([sys.executable, "-m", "neurosam.cli", "run", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (directory / "out.zarr/segmentation" / name).exists()
