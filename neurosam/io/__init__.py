"""Arrays in world units: zarr and N5, and conversion from HDF5 / TIFF."""
