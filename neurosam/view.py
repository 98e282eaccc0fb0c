"""A look at a run: the whole run in neuroglancer, read lazily from its zarr arrays, or one
section of a segmentation over its raw drawn to a PNG."""

from __future__ import annotations

import json
import os
import threading

from funlib.geometry import Coordinate, Roi

from neurosam import layout
from neurosam.config import RunConfig
from neurosam.graph.metrics import plot_segmentation_slice
from neurosam.io.volumes import VolumeError, dataset_exists, open_array, require_same_voxel_size


# The first three affinity channels (by default the nearest neighbours along z, y, x) as red, green, blue.
AFFINITY_SHADER = """
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), toNormalized(getDataValue(2))));
}
"""


def render_overview(
    raw_path: str | os.PathLike,
    segmentation_path: str | os.PathLike,
    out_png: str | os.PathLike,
    z: int | None = None,
) -> None:
    """Draw section ``z`` (counted from the start of the region both arrays cover; default the
    middle one) with segment boundaries and colours over the raw."""
    raw = open_array(raw_path)
    segmentation = open_array(segmentation_path)
    require_same_voxel_size(raw, raw_path, segmentation, segmentation_path)
    shared = raw.roi.intersect(segmentation.roi)
    if shared.empty:
        raise VolumeError(f"{raw_path} ({raw.roi}) and {segmentation_path} ({segmentation.roi}) do not overlap")
    voxel_size = raw.voxel_size
    sections = shared.shape[0] // voxel_size[0]
    z = sections // 2 if z is None else z
    if not 0 <= z < sections:
        raise VolumeError(f"section z={z} is outside the {sections} sections that both arrays cover")
    section = Roi(
        shared.offset + Coordinate(z * voxel_size[0], 0, 0),
        Coordinate(voxel_size[0], *shared.shape[1:]),
    )
    plot_segmentation_slice(
        raw[section],
        segmentation[section],
        out_png,
        z=0,
        title=f"{segmentation_path}, section {z} (z = {section.offset[0]} nm)",
    )


def default_threshold(config: RunConfig) -> float:
    """The threshold that scored best when the run was evaluated, else the middle one: the
    segmentation most worth looking at first."""
    evaluation = config.work_dir / "evaluation.json"
    if evaluation.exists():
        return float(json.loads(evaluation.read_text())["best_threshold"])
    thresholds = config.segment.thresholds
    return thresholds[len(thresholds) // 2]


def _local_volume(path: str, volume_type: str):
    """A neuroglancer source over the dataset's zarr array, so only the chunks the browser asks
    for are read, placed in the world (nm, z y x) by the array's own voxel size and offset.
    Channels (the affinities') become neuroglancer's channel dimension ``c^``."""
    import neuroglancer

    array = open_array(path)
    channels = array.channel_dims
    return neuroglancer.LocalVolume(
        array._source_data,
        dimensions=neuroglancer.CoordinateSpace(
            names=["c^"] * channels + ["z", "y", "x"],
            units=[""] * channels + ["nm"] * 3,
            scales=[1] * channels + list(array.voxel_size),
        ),
        voxel_offset=[0] * channels + list(array.offset // array.voxel_size),
        volume_type=volume_type,
    )


def open_viewer(config: RunConfig, threshold: float, bind: str = "127.0.0.1", port: int = 0):
    """A neuroglancer viewer of the run: raw, affinities, fragments, the segmentation at
    ``threshold`` and the ground truth, each only if its dataset exists. Fragments and
    segmentation are both segmentation layers, so the selection panel shows the fragment id and
    the segment id under the cursor side by side. Returns at once: a background thread serves
    the viewer for as long as this process lives."""
    import neuroglancer

    layers = [
        ("raw", config.datasets.raw, "image"),
        ("affinities", config.datasets.affinities, "image"),
        ("fragments", config.datasets.fragments, "segmentation"),
        (f"segmentation {threshold:.4f}", layout.segmentation_path(config, threshold), "segmentation"),
        ("ground truth", config.datasets.ground_truth, "segmentation"),
    ]
    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    with viewer.txn() as state:
        state.display_dimensions = ["x", "y", "z"]  # sections in the imaging plane, x across
        for name, path, volume_type in layers:
            if path is None or not dataset_exists(path):
                continue
            volume = _local_volume(path, volume_type)
            if volume_type == "segmentation":
                # No meshes: neuroglancer meshes a segment from the whole volume held in memory.
                source = neuroglancer.LayerDataSource(url=volume, subsources={"meshes": False})
                state.layers[name] = neuroglancer.SegmentationLayer(source=source)
            elif name == "affinities":
                state.layers[name] = neuroglancer.ImageLayer(source=volume, shader=AFFINITY_SHADER)
            else:
                state.layers[name] = neuroglancer.ImageLayer(source=volume)
    return viewer


def serve(viewer) -> None:
    """Print the viewer's URL and keep the process (and so the server) alive until Ctrl-C."""
    print(viewer.get_viewer_url(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
