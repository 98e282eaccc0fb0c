"""The contact statistics' scan, compiled: the voxel pairs of a block summed in runs as they come
in scan order, the runs sorted by counting and joined per fragment pair
(``neurosam.graph.agglomeration.contact_statistics`` is the entry point)."""

from __future__ import annotations

import numba
import numpy as np

#: The statistics of a run of voxel pairs, a row of float64: pairs of one fragment pair that
#: follow one another in the scan are summed as they come, and only runs are sorted.
FIELDS = ("max", "min", "sum", "area", "claimed")


def joined_runs(labels, affinities, claimed, base, offset, volume_shape):
    """(codes, FIELDS rows, last places) per pair code of the block, sorted by code: the voxels
    scanned twice, once to count the runs and once to fill them, so that nothing is held per
    voxel pair."""
    scan = (labels, affinities, claimed, base, offset, volume_shape)
    runs = np.zeros((scan_runs(*scan, None, None, None), len(FIELDS)))
    codes, places = np.zeros(len(runs), dtype=np.uint64), np.zeros(len(runs), dtype=np.uint64)
    scan_runs(*scan, runs, codes, places)
    return join_runs(codes, runs, places, stable_order(codes))


@numba.njit(cache=True, nogil=True)
def scan_runs(labels, affinities, claimed, base, offset, volume_shape, runs, codes, places):
    """The voxel pairs of different non-zero labels, axis by axis, each in scan order, as runs
    of one pair code (min * base + max): into ``runs`` (FIELDS, the affinities as float32, summed
    in float64: exact for uint8 affinities, in any order), ``codes`` and ``places`` (3 * the
    last upper voxel's index in the volume + the axis), unless they are None. Returns the number
    of runs. A pass over the voxels, where numpy took a dozen with volume-sized temporaries."""
    depth, height, width = labels.shape
    n = 0
    previous = np.uint64(0)
    for axis in range(3):
        dz, dy, dx = int(axis == 0), int(axis == 1), int(axis == 2)
        with_claims = claimed[axis].size > 0
        for z in range(dz, depth):
            for y in range(dy, height):
                for x in range(dx, width):
                    here, there = np.uint64(labels[z, y, x]), np.uint64(labels[z - dz, y - dy, x - dx])
                    if here == there or here == 0 or there == 0:
                        continue
                    code = min(here, there) * base + max(here, there)
                    if n == 0 or code != previous:
                        n += 1
                        previous = code
                        if runs is not None:
                            codes[n - 1] = code
                            runs[n - 1, 0] = -np.inf
                            runs[n - 1, 1] = np.inf
                    if runs is None:
                        continue
                    value = np.float64(np.float32(affinities[axis, z, y, x]))
                    run = runs[n - 1]
                    run[0] = max(run[0], value)
                    run[1] = min(run[1], value)
                    run[2] += value
                    run[3] += 1
                    if with_claims and claimed[axis][z, y, x]:
                        run[4] += 1
                    index = (np.uint64(z + offset[0]) * np.uint64(volume_shape[1]) + np.uint64(y + offset[1])) * np.uint64(
                        volume_shape[2]
                    ) + np.uint64(x + offset[2])
                    places[n - 1] = index * np.uint64(3) + np.uint64(axis)
    return n


RADIX_BITS = 16


@numba.njit(cache=True, nogil=True)
def stable_order(codes):
    """The stable sorting order of ``codes`` (uint64), by counting, RADIX_BITS at a time."""
    order = np.arange(len(codes))
    other = np.empty_like(order)
    top = codes.max() if len(codes) else np.uint64(0)
    digits = 1 << RADIX_BITS
    shift = 0
    while shift < 64 and (shift == 0 or top >> np.uint64(shift) > 0):
        counts = np.zeros(digits + 1, dtype=np.int64)
        for i in order:
            counts[((codes[i] >> np.uint64(shift)) & np.uint64(digits - 1)) + 1] += 1
        counts = np.cumsum(counts)
        for i in order:
            digit = (codes[i] >> np.uint64(shift)) & np.uint64(digits - 1)
            other[counts[digit]] = i
            counts[digit] += 1
        order, other = other, order
        shift += RADIX_BITS
    return order


@numba.njit(cache=True, nogil=True)
def join_runs(codes, runs, places, order):
    """The runs of each pair code joined, in ``order``: (codes, FIELDS, last places)."""
    groups = 0
    for k in range(len(order)):
        groups += k == 0 or codes[order[k]] != codes[order[k - 1]]
    joined_codes = np.empty(groups, dtype=np.uint64)
    joined = np.empty((groups, runs.shape[1]))
    last = np.empty(groups, dtype=np.uint64)
    g = -1
    for k in range(len(order)):
        i = order[k]
        if k == 0 or codes[i] != codes[order[k - 1]]:
            g += 1
            joined_codes[g] = codes[i]
            for field in range(runs.shape[1]):
                joined[g, field] = runs[i, field]
            last[g] = places[i]
            continue
        joined[g, 0] = max(joined[g, 0], runs[i, 0])
        joined[g, 1] = min(joined[g, 1], runs[i, 1])
        for field in range(2, runs.shape[1]):
            joined[g, field] += runs[i, field]
        last[g] = max(last[g], places[i])
    return joined_codes, joined, last
