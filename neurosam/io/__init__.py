"""Arrays in world units (nm): zarr and N5, and conversion from HDF5 / TIFF."""


class VolumeError(ValueError):
    """A dataset that is missing or does not fit the run: the message names it."""
