"""A quick look at a segmentation over its raw data, reading one section and nothing more."""

from __future__ import annotations

import os

from funlib.geometry import Coordinate, Roi

from neurosam.evaluate import plot_segmentation_slice
from neurosam.volumes import VolumeError, open_array, require_same_voxel_size


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
