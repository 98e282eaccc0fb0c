import gzip
import itertools
import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from funlib.geometry import Coordinate, Roi

from neurosam.io.convert import ConvertError, TiffStack, convert
from neurosam.io.volumes import VolumeError, open_array
from neurosam.layout import StoredArray

GALA = Path(__file__).resolve().parents[1] / "neurosam" / "data" / "gala_fib_train.h5"


def read_back(path):
    array = open_array(path)
    return array, array[array.roi]


def write_h5(path, name, data, **attrs):
    with h5py.File(path, "a") as file:
        dataset = file.create_dataset(name, data=data, chunks=True)
        dataset.attrs.update(attrs)


def test_hdf5_dataset_with_resolution_and_offset(tmp_path, monkeypatch):
    data = np.random.default_rng(0).integers(0, 2**40, (9, 21, 34), dtype=np.uint64)
    write_h5(tmp_path / "in.h5", "group/labels", data, resolution=[30, 6, 6], offset=[60, 12, 0])
    read_shapes = []
    read = h5py.Dataset.__getitem__

    def recording_read(self, key):
        block = read(self, key)
        read_shapes.append(block.shape)
        return block

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_read)
    convert(tmp_path / "in.h5", "group/labels", tmp_path / "out.zarr" / "labels", chunk_shape=(4, 8, 16))
    array, stored = read_back(tmp_path / "out.zarr" / "labels")
    assert array.voxel_size == Coordinate(30, 6, 6)
    assert array.offset == Coordinate(60, 12, 0)
    assert tuple(array.data.chunksize) == (4, 8, 16)
    assert max(np.prod(shape) for shape in read_shapes) <= 4 * 8 * 16
    assert stored.dtype == np.uint64
    np.testing.assert_array_equal(stored, data)


def test_explicit_voxel_size_and_offset_override_the_file(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=">u2").reshape(4, 5, 6)
    write_h5(tmp_path / "in.h5", "raw", data, resolution=[1, 1, 1])
    convert(tmp_path / "in.h5", "raw", tmp_path / "out.zarr" / "raw", voxel_size=(8, 4, 4), offset=(16, 0, 8))
    array, stored = read_back(tmp_path / "out.zarr" / "raw")
    assert array.roi == Roi((16, 0, 8), (32, 20, 24))
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, data)


def test_channels_first_hdf5_becomes_a_channel_axis(tmp_path):
    data = np.random.default_rng(1).random((3, 5, 6, 7), dtype=np.float32)
    write_h5(tmp_path / "in.h5", "affs", data, resolution=[10, 10, 10])
    convert(tmp_path / "in.h5", "affs", tmp_path / "out.zarr" / "affs")
    array, stored = read_back(tmp_path / "out.zarr" / "affs")
    assert array.roi == Roi((0, 0, 0), (50, 60, 70))
    np.testing.assert_array_equal(stored, data)


def test_real_fib_sem_volume_converts_voxel_for_voxel(tmp_path):
    convert(GALA, "raw", tmp_path / "gala.zarr" / "raw", chunk_shape=(16, 32, 64))
    array, stored = read_back(tmp_path / "gala.zarr" / "raw")
    with h5py.File(GALA, "r") as file:
        source = file["raw"]
        np.testing.assert_array_equal(stored, source[:])
        assert array.voxel_size == Coordinate(source.attrs["resolution"])
        assert array.offset == Coordinate(source.attrs["offset"])
    assert stored.dtype == np.uint8


@pytest.fixture
def stack():
    return np.random.default_rng(2).integers(0, 2**16, (12, 19, 23), dtype=np.uint16)


def test_multipage_tiff_is_read_once_in_slabs(tmp_path, stack, monkeypatch):
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    sections_read = []
    read = TiffStack._section
    monkeypatch.setattr(TiffStack, "_section", lambda self, z: sections_read.append(z) or read(self, z))
    convert(tmp_path / "stack.tif", None, tmp_path / "out.zarr" / "raw", voxel_size=(40, 4, 4), chunk_shape=(3, 8, 8))
    array, stored = read_back(tmp_path / "out.zarr" / "raw")
    assert array.voxel_size == Coordinate(40, 4, 4)
    assert array.offset == Coordinate(0, 0, 0)
    assert sorted(sections_read) == list(range(len(stack)))
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, stack)


def test_directory_of_sections_in_natural_order(tmp_path, stack):
    sections = tmp_path / "sections"
    sections.mkdir()
    for z, section in enumerate(stack):
        tifffile.imwrite(sections / f"section_{z}.tif", section)
    (sections / "notes.txt").write_text("not a section")
    convert(sections, None, tmp_path / "out.zarr" / "raw", voxel_size=(40, 4, 4), offset=(80, 0, 0))
    array, stored = read_back(tmp_path / "out.zarr" / "raw")
    assert array.offset == Coordinate(80, 0, 0)
    np.testing.assert_array_equal(stored, stack)


def test_section_of_another_size_is_named(tmp_path, stack):
    sections = tmp_path / "sections"
    sections.mkdir()
    tifffile.imwrite(sections / "a.tif", stack[0])
    tifffile.imwrite(sections / "b.tif", stack[1, :10])
    with pytest.raises(ConvertError, match="b.tif"):
        convert(sections, None, tmp_path / "out.zarr" / "raw", voxel_size=(40, 4, 4))


def test_missing_input_file(tmp_path):
    with pytest.raises(ConvertError, match="nothere.h5: no such file"):
        convert(tmp_path / "nothere.h5", "raw", tmp_path / "out.zarr" / "raw")


def test_missing_dataset_lists_the_ones_there(tmp_path):
    write_h5(tmp_path / "in.h5", "raw", np.zeros((2, 2, 2), np.uint8), resolution=[1, 1, 1])
    write_h5(tmp_path / "in.h5", "gt/ids", np.zeros((2, 2, 2), np.uint8), resolution=[1, 1, 1])
    with pytest.raises(ConvertError, match=r"no dataset 'labels'; it holds gt/ids, raw"):
        convert(tmp_path / "in.h5", "labels", tmp_path / "out.zarr" / "labels")


def test_wrong_dimensionality(tmp_path):
    write_h5(tmp_path / "in.h5", "image", np.zeros((5, 5), np.uint8), resolution=[4, 4])
    with pytest.raises(ConvertError, match=r"in.h5/image: expected a 3D .* found 2D"):
        convert(tmp_path / "in.h5", "image", tmp_path / "out.zarr" / "image")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 5, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(ConvertError, match="2D greyscale"):
        convert(tmp_path / "rgb.tif", None, tmp_path / "out.zarr" / "rgb", voxel_size=(1, 1, 1))


def test_missing_voxel_size_names_the_dataset(tmp_path):
    write_h5(tmp_path / "in.h5", "raw", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ConvertError, match="in.h5/raw: no 'resolution' attribute"):
        convert(tmp_path / "in.h5", "raw", tmp_path / "out.zarr" / "raw")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(ConvertError, match="stack.tif: a TIFF stack carries no voxel size"):
        convert(tmp_path / "stack.tif", None, tmp_path / "out.zarr" / "raw")


@pytest.mark.parametrize("voxel_size", [(0, 8, 8), (-40, 8, 8)])
def test_voxel_size_that_is_not_positive_is_one_line_before_any_write(tmp_path, capsys, voxel_size):
    from neurosam.cli import main

    write_h5(tmp_path / "in.h5", "raw", np.zeros((2, 2, 2), np.uint8))
    code = main(["convert", str(tmp_path / "in.h5"), str(tmp_path / "out.zarr" / "raw"), "--dataset", "raw",
                 "--voxel-size", *map(str, voxel_size)])
    error = capsys.readouterr().err
    assert code == 2 and len(error.splitlines()) == 1 and "must be positive" in error
    assert not (tmp_path / "out.zarr").exists()


def test_existing_output_of_another_shape_is_not_overwritten(tmp_path):
    write_h5(tmp_path / "in.h5", "small", np.ones((2, 2, 2), np.uint8), resolution=[1, 1, 1])
    write_h5(tmp_path / "in.h5", "large", np.ones((3, 2, 2), np.uint8), resolution=[1, 1, 1])
    convert(tmp_path / "in.h5", "small", tmp_path / "out.zarr" / "raw")
    with pytest.raises(ConvertError, match=r"out.zarr/raw already exists as uint8 \(2, 2, 2\)"):
        convert(tmp_path / "in.h5", "large", tmp_path / "out.zarr" / "raw")
    _, stored = read_back(tmp_path / "out.zarr" / "raw")
    np.testing.assert_array_equal(stored, np.ones((2, 2, 2), np.uint8))


def write_n5(dataset_dir: Path, data: np.ndarray, block_shape, compression: str, attributes: dict):
    """A minimal N5 writer, following the spec independently of the reader under test."""
    dataset_dir.mkdir(parents=True)
    (dataset_dir.parent / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    (dataset_dir / "attributes.json").write_text(
        json.dumps(
            {
                "dimensions": list(reversed(data.shape)),
                "blockSize": list(reversed(block_shape)),
                "dataType": data.dtype.name,
                "compression": {"type": compression},
                **attributes,
            }
        )
    )
    grid = [range(0, size, step) for size, step in zip(data.shape, block_shape)]
    for start in itertools.product(*grid):
        block = data[tuple(slice(s, s + b) for s, b in zip(start, block_shape))]
        header = struct.pack(">HH", 0, data.ndim) + struct.pack(f">{data.ndim}I", *reversed(block.shape))
        payload = block.astype(block.dtype.newbyteorder(">")).tobytes()
        if compression == "gzip":
            payload = gzip.compress(payload)
        path = dataset_dir.joinpath(*(str(s // b) for s, b in reversed(list(zip(start, block_shape)))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(header + payload)


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_n5_read_through_open_array(tmp_path, compression):
    data = np.random.default_rng(3).integers(0, 2**30, (10, 13, 17), dtype=np.uint32)
    write_n5(
        tmp_path / "x.n5" / "volumes" / "ds", data, (4, 5, 6), compression,
        {"resolution": [4, 6, 40], "offset": [8, 12, 80]},
    )
    array = open_array(tmp_path / "x.n5" / "volumes" / "ds")
    assert array.voxel_size == Coordinate(40, 6, 4)
    assert array.offset == Coordinate(80, 12, 8)
    assert array.dtype == np.uint32
    np.testing.assert_array_equal(array[array.roi], data)
    part = Roi((80 + 3 * 40, 12 + 4 * 6, 8 + 5 * 4), (4 * 40, 7 * 6, 9 * 4))
    np.testing.assert_array_equal(array[part], data[3:7, 4:11, 5:14])
    stored = StoredArray.of(str(tmp_path / "x.n5" / "volumes" / "ds"), array)
    np.testing.assert_array_equal(stored.read(part), data[3:7, 4:11, 5:14])


def test_n5_funlib_attributes_missing_blocks_and_channels(tmp_path):
    data = np.random.default_rng(4).random((2, 6, 7, 8)).astype(np.float32)
    data[:, 3:] = 0
    write_n5(tmp_path / "x.n5" / "affs", data, (2, 3, 4, 4), "gzip", {"voxel_size": [8, 4, 4], "offset": [16, 0, 0]})
    for block in (tmp_path / "x.n5" / "affs").glob("*/*/1/0"):
        block.unlink()
    array = open_array(tmp_path / "x.n5" / "affs")
    assert array.voxel_size == Coordinate(8, 4, 4)
    assert array.roi == Roi((16, 0, 0), (48, 28, 32))
    np.testing.assert_array_equal(array[array.roi], data)


def test_n5_unsupported_compression_is_named(tmp_path):
    write_n5(tmp_path / "x.n5" / "ds", np.zeros((2, 2, 2), np.uint8), (2, 2, 2), "raw", {})
    attributes = tmp_path / "x.n5" / "ds" / "attributes.json"
    attributes.write_text(attributes.read_text().replace('"raw"', '"zstd"'))
    with pytest.raises(VolumeError, match="compression 'zstd'"):
        open_array(tmp_path / "x.n5" / "ds")
