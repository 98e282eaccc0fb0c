"""Arrays keep their world metadata through zarr v3 and v2, and the command line converts HDF5."""

from __future__ import annotations

import json

import numpy as np
import pytest
from funlib.geometry import Roi

from neurosam.cli import main
from neurosam.io.volumes import VolumeError, create_array, dataset_exists, open_array, split_dataset_path
from neurosam.layout import StoredArray
from pipeline_support import data_file, read_h5


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_metadata_round_trip(tmp_path, zarr_format):
    roi = Roi((40, 80, 120), (40, 160, 200))
    path = tmp_path / "data.zarr" / "group" / "labels"
    array = create_array(path, roi, (4, 8, 8), np.uint64, chunk_voxels=(5, 10, 10), zarr_format=zarr_format)
    data = np.arange(np.prod(array.shape), dtype=np.uint64).reshape(array.shape)
    array[roi] = data
    metadata = "zarr.json" if zarr_format == 3 else ".zarray"
    assert (path / metadata).exists()

    reopened = open_array(path)
    assert reopened.roi == roi and tuple(reopened.voxel_size) == (4, 8, 8)
    assert reopened.axis_names == ["z", "y", "x"] and reopened.units == ["nm", "nm", "nm"]
    np.testing.assert_array_equal(reopened[Roi((48, 96, 120), (8, 16, 8))], data[2:4, 2:4, :1])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_workers_read_and_write_what_funlib_sees(tmp_path, zarr_format):
    """Block workers go to the storage directly, with the geometry the planner found."""
    roi = Roi((40, 80, 120), (40, 160, 200))
    path = tmp_path / "data.zarr" / "affs"
    array = create_array(path, roi, (4, 8, 8), np.uint8, channels=2, chunk_voxels=(4, 8, 8), zarr_format=zarr_format)
    array[roi] = np.random.default_rng(0).integers(1, 256, array.shape, dtype=np.uint8)
    stored = StoredArray.of(str(path), open_array(path))
    assert stored.channels == (2,)

    inside = Roi((48, 96, 120), (8, 16, 40))
    np.testing.assert_array_equal(stored.read(inside), array[inside])
    overhanging = Roi((32, 64, 120), (16, 32, 16))
    read = stored.read(overhanging, fill_value=0)
    assert read.shape == (2, 4, 4, 2)
    np.testing.assert_array_equal(read[:, 2:, 2:], array[overhanging.intersect(roi)])
    assert (read[:, :2] == 0).all() and (read[:, :, :2] == 0).all()

    stored.write(inside, np.full((2, 2, 2, 5), 7, np.uint8))
    assert (open_array(path)[inside] == 7).all()
    with pytest.raises(ValueError, match="outside the array's ROI"):
        stored.write(overhanging, read)


def test_reopening_keeps_what_is_written(tmp_path):
    roi = Roi((0, 0, 0), (10, 10, 10))
    create_array(tmp_path / "a.zarr/x", roi, (1, 1, 1), np.uint8)[roi] = 9
    assert (create_array(tmp_path / "a.zarr/x", roi, (1, 1, 1), np.uint8)[roi] == 9).all()


def test_paths_and_errors(tmp_path):
    assert split_dataset_path("/a/b.zarr/c/d") == (tmp_path.__class__("/a/b.zarr"), "c/d")
    with pytest.raises(VolumeError, match="container"):
        split_dataset_path("/a/b/c")
    with pytest.raises(VolumeError, match="does not exist"):
        open_array(tmp_path / "missing.zarr/raw")
    create_array(tmp_path / "a.zarr/raw", Roi((0, 0, 0), (2, 2, 2)), (1, 1, 1), np.uint8)
    assert dataset_exists(tmp_path / "a.zarr/raw") and not dataset_exists(tmp_path / "a.zarr/other")
    with pytest.raises(VolumeError, match="no dataset 'other'"):
        open_array(tmp_path / "a.zarr/other")
    with pytest.raises(VolumeError, match="multiple of the voxel size"):
        create_array(tmp_path / "a.zarr/odd", Roi((0, 0, 0), (3, 4, 4)), (2, 2, 2), np.uint8)


def test_convert_command_writes_zarr_v2_with_world_metadata(tmp_path, capsys):
    output = tmp_path / "out.zarr" / "raw"
    assert main(["convert", str(data_file("gala_fib_train.h5")), str(output), "--dataset", "raw", "--zarr-format", "2"]) == 0
    assert json.loads((output / ".zarray").read_text())["zarr_format"] == 2
    expected, voxel_size = read_h5("gala_fib_train.h5", "raw")
    array = open_array(output)
    assert array.voxel_size == voxel_size
    np.testing.assert_array_equal(array[array.roi], expected)
    assert main(["convert", str(data_file("gala_fib_train.h5")), str(output), "--dataset", "nothing"]) == 2
    assert "nothing" in capsys.readouterr().err
