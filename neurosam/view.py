"""A look at a run: the whole run in neuroglancer, read lazily from its zarr arrays, or one
section of a segmentation over its raw drawn to a PNG."""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from funlib.geometry import Coordinate, Roi

from neurosam import layout
from neurosam.config import RunConfig
from neurosam.io.volumes import VolumeError, dataset_exists, open_array, open_storage, require_same_voxel_size


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
    evaluation = layout.evaluation_path(config.work_dir)
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
        open_storage(path),
        dimensions=neuroglancer.CoordinateSpace(
            names=["c^"] * channels + ["z", "y", "x"],
            units=[""] * channels + ["nm"] * 3,
            scales=[1] * channels + list(array.voxel_size),
        ),
        voxel_offset=[0] * channels + list(array.offset // array.voxel_size),
        volume_type=volume_type,
    )


SHOWN_MESHES = 10
"""Segments whose meshes the 3D view opens on: the largest meshes."""


def open_viewer(config: RunConfig, threshold: float, bind: str = "127.0.0.1", port: int = 0):
    """A neuroglancer viewer of the run, opened on the answer: raw and the segmentation at
    ``threshold`` visible; affinities, fragments and ground truth there but hidden (three
    segmentation layers at once blend into noise); a large xy section beside the 3D view, at the
    volume's centre. Where the meshes and skeletons stages made this segmentation's, its layer
    reads them too (served from the work dir) and the 3D view shows the largest segments. Fragments
    and segmentation are both segmentation layers, so the selection panel shows the fragment id
    and the segment id under the cursor side by side. Returns at once: background threads serve
    the viewer for as long as this process lives."""
    import neuroglancer

    segmentation = f"segmentation {threshold:.4f}"
    layers = [
        ("raw", config.datasets.raw, "image"),
        ("affinities", config.datasets.affinities, "image"),
        ("fragments", config.datasets.fragments, "segmentation"),
        (segmentation, layout.segmentation_path(config, threshold), "segmentation"),
        ("ground truth", config.datasets.ground_truth, "segmentation"),
    ]
    visible = {"raw", segmentation}
    neurons = layout.neurons_dir(config, threshold)
    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    with viewer.txn() as state:
        state.display_dimensions = ["x", "y", "z"]  # sections in the imaging plane, x across
        for name, path, volume_type in layers:
            if path is None or not dataset_exists(path):
                continue
            volume = _local_volume(path, volume_type)
            if volume_type == "segmentation":
                # neuroglancer would mesh a segment from the whole volume held in memory: only
                # the meshes stage's own meshes are shown.
                sources = [neuroglancer.LayerDataSource(url=volume, subsources={"meshes": False})]
                if name == segmentation and neurons.is_dir():
                    served = serve_directory(neurons, bind)
                    sources += [f"precomputed://{served}/{part.name}" for part in sorted(neurons.iterdir()) if (part / "info").exists()]
                layer = neuroglancer.SegmentationLayer(source=sources)
                if name == segmentation:
                    layer.segments = _largest_meshes(neurons / "mesh")
            elif name == "affinities":
                layer = neuroglancer.ImageLayer(source=volume, shader=AFFINITY_SHADER)
            else:
                layer = neuroglancer.ImageLayer(source=volume)
            state.layers.append(name=name, layer=layer, visible=name in visible)
        names = [layer.name for layer in state.layers]
        state.layout = neuroglancer.row_layout([
            neuroglancer.LayerGroupViewer(layers=names, layout="xy", flex=3),
            neuroglancer.LayerGroupViewer(layers=names, layout="3d", flex=1),
        ])
        _centre_on(state, next(path for _, path, _ in layers if path is not None and dataset_exists(path)))
    return viewer


FILLED_PIXELS = 600
"""Screen pixels the volume's xy extent spans when the viewer opens."""


def _centre_on(state, path: str) -> None:
    """Position at the centre of the array at ``path``, in its voxels (x y z), zoomed so that its
    xy extent fills the section and the 3D view."""
    import neuroglancer

    array = open_array(path)
    voxel_size = array.voxel_size[::-1]
    state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=list(voxel_size))
    centre = (array.roi.offset + array.roi.shape / 2) / array.voxel_size
    state.position = [float(c) for c in centre[::-1]]
    extent = max(array.roi.shape[1:]) / voxel_size[0]
    state.cross_section_scale = extent / FILLED_PIXELS
    state.projection_scale = 2 * extent


def _largest_meshes(directory) -> list[int]:
    """The segments with the largest mesh files: the big neurons of the volume."""
    if not directory.is_dir():
        return []
    meshes = [path for path in directory.iterdir() if path.name.isdigit()]
    return [int(path.name) for path in sorted(meshes, key=lambda path: -path.stat().st_size)[:SHOWN_MESHES]]


def serve_directory(directory, bind: str = "127.0.0.1") -> str:
    """Serve ``directory`` (data in the precomputed format) over HTTP to the browser, with CORS,
    on any free port, from a background thread; returns its URL."""
    import functools
    import socket
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((bind, 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = socket.getfqdn() if bind in ("0.0.0.0", "") else bind
    return f"http://{host}:{server.server_port}"


def serve(viewer) -> None:
    """Print the viewer's URL and keep the process (and so the server) alive until Ctrl-C."""
    print(viewer.get_viewer_url(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


def _segment_colours(segmentation: np.ndarray) -> np.ndarray:
    """RGBA per voxel, a colour fixed by the id alone so a segment looks the same in every picture."""
    import matplotlib.colors

    ids = segmentation.astype(np.uint64)
    hue = (ids * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)).astype(np.float64) / 2.0**24
    saturation = 0.55 + 0.45 * ((ids * np.uint64(0xC2B2AE3D27D4EB4F) >> np.uint64(60)).astype(np.float64) / 16.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1)
    rgba = np.concatenate([matplotlib.colors.hsv_to_rgb(hsv), np.ones((*ids.shape, 1))], axis=-1)
    rgba[ids == 0] = 0.0
    return rgba


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour carries another label."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def plot_segmentation_slice(
    raw: np.ndarray,
    segmentation: np.ndarray,
    path: str | os.PathLike,
    z: int | None = None,
    colour_alpha: float = 0.35,
    boundary_colour: str = "yellow",
    title: str | None = None,
) -> None:
    """Draw section ``z`` (default: the middle one) of the raw with segments over it.

    Segments are tinted in translucent colours (``colour_alpha`` 0 turns that off) and outlined
    (``boundary_colour`` None turns that off). Segment 0 is left untinted.
    """
    import matplotlib.colors
    from matplotlib.figure import Figure

    if raw.shape != segmentation.shape or raw.ndim != 3:
        raise ValueError(f"raw {raw.shape} and segmentation {segmentation.shape} must be 3D volumes of one shape")
    z = raw.shape[0] // 2 if z is None else z
    if not 0 <= z < raw.shape[0]:
        raise ValueError(f"section z={z} is outside the volume's {raw.shape[0]} sections")
    section = segmentation[z]

    height, width = section.shape
    figure = Figure(figsize=(8, 8 * height / width), dpi=100)
    axis = figure.subplots()
    axis.imshow(raw[z], cmap="gray", interpolation="nearest")
    if colour_alpha > 0:
        colours = _segment_colours(section)
        colours[..., 3] *= colour_alpha
        axis.imshow(colours, interpolation="nearest")
    if boundary_colour is not None:
        outline = np.zeros((height, width, 4))
        outline[_boundaries(section)] = matplotlib.colors.to_rgba(boundary_colour)
        axis.imshow(outline, interpolation="nearest")
    axis.set_title(title if title is not None else f"section z={z}, {len(np.unique(section))} segments")
    axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)


def plot_scores_vs_threshold(per_threshold: dict[float, dict], path: str | os.PathLike):
    """VOI split / merge / total, adapted Rand error and, where scored, expected run length (with
    its merges and splits) against the agglomeration threshold; returns the figure, so what it
    shows can be checked."""
    from matplotlib.figure import Figure

    if not per_threshold:
        raise ValueError("no thresholds to plot")
    thresholds = sorted(per_threshold, key=float)
    x = [float(t) for t in thresholds]
    with_erl = all("erl" in per_threshold[t] for t in thresholds)
    figure = Figure(figsize=(16 if with_erl else 11, 4.5))
    voi_axis, rand_axis, *erl_axis = figure.subplots(1, 3 if with_erl else 2)
    for key, style in (("voi_split", "--"), ("voi_merge", ":"), ("voi", "-")):
        voi_axis.plot(x, [per_threshold[t][key] for t in thresholds], style, marker="o", label=key)
    best = min(thresholds, key=lambda t: per_threshold[t]["voi"])
    voi_axis.axvline(float(best), color="grey", linewidth=0.8)
    voi_axis.set_title(f"VOI (bits), best {per_threshold[best]['voi']:.3f} at {float(best):g}")
    voi_axis.set_xlabel("threshold")
    voi_axis.legend()
    rand_axis.plot(x, [per_threshold[t]["adapted_rand_error"] for t in thresholds], marker="o", color="C3")
    rand_axis.set_title("adapted Rand error")
    rand_axis.set_xlabel("threshold")
    rand_axis.set_ylim(bottom=0)
    if with_erl:
        erl = [per_threshold[t]["erl"] / 1000 for t in thresholds]
        erl_axis[0].plot(x, erl, marker="o", color="C2")
        for t, value in zip(thresholds, erl):
            scores = per_threshold[t]
            erl_axis[0].annotate(f"{scores['erl_merges']}m {scores['erl_splits']}s", (float(t), value), fontsize=8)
        erl_axis[0].set_title("ERL (um), merges m / splits s")
        erl_axis[0].set_xlabel("threshold")
        erl_axis[0].set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path)
    return figure
