"""Check a run's inputs before any work starts, and work out its ``RunPlan``: the volume, the
arrays, and every task's block layout.

Everything here reads metadata only (and, for predict, the checkpoint's header and weights). A
problem gets one error that names the dataset, key, file or database at fault, raised before a
single block runs, so nothing already written is touched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import nearest_neighbour_channels
from neurosam.config import RunConfig
from neurosam.io.volumes import create_array, dataset_exists, describe, open_array, open_storage
from neurosam.layout import RunPlan, StoredArray, TaskLayout
from neurosam.pipeline.registry import stages_for
from neurosam.rag import open_rag
from neurosam.stages.predict import predicted_affinities
from neurosam.stages.stage import InputError, OutputArray, Stage, check_input, require_multiple

MAX_CHUNK_VOXELS = 64


def output_chunk_voxels(block_size: Coordinate, voxel_size: Coordinate) -> tuple[int, ...]:
    """Output chunks tile every block, so no two workers ever write the same chunk; each is the
    largest divisor of the block at most ``MAX_CHUNK_VOXELS`` along its axis, so a read with
    context decodes little beyond the voxels it asked for."""
    return tuple(max(d for d in range(1, min(b, MAX_CHUNK_VOXELS) + 1) if b % d == 0) for b in block_size / voxel_size)


def output_chunks(output: OutputArray, voxel_size: Coordinate) -> tuple[int, ...]:
    """An array of layers (``OutputArray.layer_axis``) stores one layer per chunk along its axis."""
    chunks = output_chunk_voxels(output.block_size, voxel_size)
    if output.layer_axis is None:
        return chunks
    return tuple(1 if axis == output.layer_axis else c for axis, c in enumerate(chunks))


def _input_affinities(config: RunConfig):
    """Affinities someone else predicted: the volume, voxel size and offsets come from them."""
    path = config.datasets.affinities
    affinities = open_array(path)
    if affinities.dtype != np.uint8:
        raise InputError(f"affinities {path}: dtype {affinities.dtype}, expected uint8 (0..255 = 0..1)")
    if len(affinities.shape) != 4:
        raise InputError(f"affinities {path}: expected (channels, z, y, x), got shape {affinities.shape}")
    offsets = affinities.attrs.get("offsets")
    if offsets is None:
        raise InputError(f"affinities {path}: no 'offsets' attribute naming the neighbourhood of each channel")
    return affinities.voxel_size, affinities.roi, [list(map(int, o)) for o in offsets], StoredArray.of(path, affinities)


def _volume_roi(config: RunConfig, source_roi: Roi, voxel_size: Coordinate, source: str) -> Roi:
    if config.roi is None:
        return source_roi
    volume_roi = Roi(config.roi.offset, config.roi.shape)
    require_multiple("roi.offset", volume_roi.offset, voxel_size)
    require_multiple("roi.shape", volume_roi.shape, voxel_size)
    if not source_roi.contains(volume_roi):
        raise InputError(f"roi {volume_roi} lies outside the {source}' ROI {source_roi}")
    return volume_roi


def task_ids(config: RunConfig) -> dict[str, str]:
    """Stage name -> task id. A task's id carries a fingerprint of everything its output depends
    on (its config sections, and its upstream task's fingerprint unless it uses nothing upstream
    writes), so changing a parameter starts that task and everything downstream afresh, while an
    unchanged rerun skips every finished block."""
    ids, upstream = {}, ""
    for stage in stages_for(config):
        version = "" if stage.version == 1 else f"version {stage.version}"
        own = _digest((upstream if stage.uses_upstream else "") + config.fingerprint(*stage.sections) + version)
        ids[stage.name] = f"{stage.name}-{own}"
        upstream = own if stage.uses_upstream else _digest(upstream + own)
    return ids


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _task_layouts(stage: Stage, task_id: str, plan: RunPlan) -> list[TaskLayout]:
    """One task, or one per step of a stage that runs as several (its id then ends in the step's name)."""
    if stage.steps is None:
        return [TaskLayout(task_id, stage.name, stage.block_function, *stage.layout(plan))]
    return [
        TaskLayout(f"{task_id}-{step.name}", stage.name, step.block_function, *step.layout, step.level)
        for step in stage.steps(plan)
    ]


def check_work_dir(config: RunConfig) -> None:
    if config.work_dir.exists() and not config.work_dir.is_dir():
        raise InputError(f"work_dir {config.work_dir} is a file, not a directory")


def plan_run(config: RunConfig, check_database: bool = True) -> RunPlan:
    check_work_dir(config)
    if config.predict is not None:
        voxel_size, source_roi, offsets = predicted_affinities(config)
        source = "raw"
    else:
        voxel_size, source_roi, offsets, affinities = _input_affinities(config)
        source = "affinities"
    try:
        nearest_channels = tuple(nearest_neighbour_channels(offsets))
    except ValueError as error:
        raise InputError(f"{source} {getattr(config.datasets, source)}: {error}") from None
    volume_roi = _volume_roi(config, source_roi, voxel_size, source)
    block_size = Coordinate(config.blocks.block_size)
    require_multiple("blocks.block_size", block_size, voxel_size)
    if config.predict is not None:
        affinities = StoredArray(config.datasets.affinities, volume_roi, voxel_size, (len(offsets),))

    plan = RunPlan(
        config=config, volume_roi=volume_roi, voxel_size=voxel_size, block_size=block_size,
        arrays={"affinities": affinities}, affinity_offsets=offsets, nearest_affinity_channels=nearest_channels,
    )
    if config.datasets.raw is not None:
        raw = check_input(plan, config.datasets.raw, "raw", (np.dtype(np.uint8),))
        plan.arrays["raw"] = StoredArray.of(config.datasets.raw, raw)
    ids = task_ids(config)
    for stage in stages_for(config):
        stage.check_inputs(plan)
        for task in _task_layouts(stage, ids[stage.name], plan):
            plan.tasks[task.task_id] = task
        for output in stage.outputs(plan):
            _check_output(output, plan)
            plan.arrays[output.role] = StoredArray(output.path, volume_roi, voxel_size, output.channels)

    if check_database:
        with open_rag(config.rag.url) as rag:
            rag.check_writable()
    return plan


def _check_output(output: OutputArray, plan: RunPlan) -> None:
    """An existing output is reused (that is how a run resumes) only if it is the same array,
    chunked so that blocks never share a chunk."""
    if not dataset_exists(output.path):
        return
    array = open_array(output.path)
    block_voxels = output.block_size / plan.voxel_size
    chunks = open_storage(output.path).chunks
    spatial_chunks = chunks[len(output.channels):]
    fits = (
        array.dtype == output.dtype
        and array.voxel_size == plan.voxel_size
        and array.roi == plan.volume_roi
        and tuple(array.shape[: len(output.channels)]) == output.channels
        and len(spatial_chunks) == len(block_voxels)
        and all(b % c == 0 for b, c in zip(block_voxels, spatial_chunks))
    )
    if not fits:
        raise InputError(
            f"{output.role} {output.path} already exists as {describe(array)}, chunks {chunks}, which does not fit "
            f"this run ({np.dtype(output.dtype)}, voxel {tuple(plan.voxel_size)} nm, ROI {plan.volume_roi}, chunks that "
            f"divide the block of {tuple(block_voxels)} voxels); it is left untouched: point the config at a new dataset "
            f"or remove the old one"
        )


def _outputs(plan: RunPlan) -> list[OutputArray]:
    return [output for stage in stages_for(plan.config) for output in stage.outputs(plan)]


def prepare_outputs(plan: RunPlan) -> None:
    """Create the missing output arrays; existing ones (a resumed run) were checked by
    ``plan_run`` and keep their voxels."""
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    for output in _outputs(plan):
        if not dataset_exists(output.path):
            create_array(
                output.path, plan.volume_roi, plan.voxel_size, output.dtype,
                channels=output.channels[0] if output.channels else None,
                chunk_voxels=output_chunks(output, plan.voxel_size),
                attrs=output.attrs,
            )


#: How far the outputs compress at most, from what the gala run writes (fragments 23x,
#: segmentations 33x, claims about 150x, affinities 2x) with a margin of two: the estimate is a
#: lower one, so a disk refused surely cannot hold the outputs.
MOST_COMPRESSION = {"labels": 64, "claims": 300, "affinities": 4}


def _lower_estimate(output: OutputArray, plan: RunPlan) -> float:
    voxels = int(np.prod(plan.volume_roi.shape / plan.voxel_size)) * int(np.prod(output.channels, dtype=np.int64))
    kind = "affinities" if np.dtype(output.dtype) == np.uint8 else "labels" if output.whole_blocks else "claims"
    return voxels * np.dtype(output.dtype).itemsize / MOST_COMPRESSION[kind]


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _size(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_free_space(plan: RunPlan, done_blocks: dict[str, set[int]], block_counts: dict[str, int]) -> None:
    """Refuse a run whose outputs still to write would not fit on their disks, by a lower
    estimate of their compressed size (``MOST_COMPRESSION``) over the blocks of this run not
    done yet (``block_counts``: its tasks)."""
    needed: dict[int, list] = {}
    for stage in stages_for(plan.config):
        task_id = plan.task_of_stage(stage.name).task_id
        if task_id not in block_counts:
            continue
        left = 1 - len(done_blocks[task_id]) / block_counts[task_id]
        for output in stage.outputs(plan):
            disk = _existing_parent(Path(output.path).resolve())
            entry = needed.setdefault(disk.stat().st_dev, [disk, 0.0])
            entry[1] += left * _lower_estimate(output, plan)
    for disk, size in needed.values():
        free = shutil.disk_usage(disk).free
        if size > free:
            raise InputError(
                f"the outputs still to write need at least {_size(size)} (a lower estimate) on the disk of {disk}, "
                f"which has {_size(free)} free: free space there, or point the output datasets at a larger disk"
            )
