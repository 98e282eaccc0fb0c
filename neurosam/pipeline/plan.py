"""Check a run's inputs before any work starts, and work out its ``RunPlan``: the volume, the
arrays, and every task's block layout.

Everything here reads metadata only (and, for predict, the checkpoint's header and weights). A
problem gets one error that names the dataset, key, file or database at fault, raised before a
single block runs, so nothing already written is touched.
"""

from __future__ import annotations

import hashlib

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import NEAREST_OFFSETS
from neurosam.config import RunConfig
from neurosam.layout import RunPlan, StoredArray, TaskLayout
from neurosam.pipeline.registry import OutputArray, Stage, stages_for
from neurosam.rag import open_rag
from neurosam.io.volumes import array_attrs, create_array, dataset_exists, describe, open_array

MAX_CHUNK_VOXELS = 64
WRITER_ATTRIBUTE = "neurosam_task"
"""Every output records the id of the task that writes it: a run whose output another task
overwrote since must not trust its record of finished blocks."""
LABEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int32", "int64"))


class InputError(ValueError):
    """Input that cannot run: the message says which and why."""


def output_chunk_voxels(block_size: Coordinate, voxel_size: Coordinate) -> tuple[int, ...]:
    """Output chunks tile every block, so no two workers ever write the same chunk; each is the
    largest divisor of the block at most ``MAX_CHUNK_VOXELS`` along its axis, so a read with
    context decodes little beyond the voxels it asked for."""
    return tuple(max(d for d in range(1, min(b, MAX_CHUNK_VOXELS) + 1) if b % d == 0) for b in block_size / voxel_size)


def nearest_neighbour_channels(offsets: list[list[int]]) -> tuple[int, ...]:
    """waterz reads the three nearest-neighbour affinities; find them among the stored offsets."""
    try:
        return tuple(offsets.index(offset) for offset in NEAREST_OFFSETS)
    except ValueError:
        raise ValueError(f"affinity offsets {offsets} lack the nearest neighbours {NEAREST_OFFSETS}") from None


def _require_multiple(name: str, value: Coordinate, unit: Coordinate, unit_name: str = "the voxel size") -> None:
    if value % unit != Coordinate((0,) * len(unit)):
        raise InputError(f"{name} {tuple(value)} nm is not a multiple of {unit_name} {tuple(unit)} nm")


def _check_input(path: str, role: str, dtypes: tuple, voxel_size: Coordinate, volume_roi: Roi, reference: str):
    array = open_array(path)
    if array.dtype not in dtypes:
        raise InputError(f"{role} {path}: dtype {array.dtype}, expected one of {[str(d) for d in dtypes]}")
    if array.voxel_size != voxel_size:
        raise InputError(
            f"{role} {path}: voxel size {tuple(array.voxel_size)} nm does not match the {reference}'s {tuple(voxel_size)} nm"
        )
    if not array.roi.contains(volume_roi):
        raise InputError(f"{role} {path}: its ROI {array.roi} does not cover the run's ROI {volume_roi}")
    return array


def _input_affinities(config: RunConfig):
    """Affinities someone else predicted: the volume, voxel size and offsets come from them."""
    path = config.datasets.affinities
    affinities = open_array(path)
    if affinities.dtype != np.uint8:
        raise InputError(f"affinities {path}: dtype {affinities.dtype}, expected uint8 (0..255 = 0..1)")
    if len(affinities.shape) != 4:
        raise InputError(f"affinities {path}: expected (channels, z, y, x), got shape {affinities.shape}")
    offsets = array_attrs(affinities).get("offsets")
    if offsets is None:
        raise InputError(f"affinities {path}: no 'offsets' attribute naming the neighbourhood of each channel")
    return affinities.voxel_size, affinities.roi, [list(map(int, o)) for o in offsets], StoredArray.of(path, affinities)


def _predicted_affinities(config: RunConfig):
    """Affinities this run predicts from the raw with the configured checkpoint, which is read
    here in full, so a missing, corrupt or mismatched file fails before any block."""
    from neurosam.model.build import ModelCheckpointError, load_model

    predict = config.predict
    if config.datasets.raw is None:
        raise InputError("predict needs datasets.raw: the raw volume the network reads")
    raw = open_array(config.datasets.raw)
    if raw.dtype != np.uint8 or len(raw.shape) != 3:
        raise InputError(f"raw {config.datasets.raw}: {describe(raw)}, expected uint8 (z, y, x)")
    try:
        model, model_config, extra = load_model(predict.checkpoint)
    except ModelCheckpointError as error:
        raise InputError(f"predict.checkpoint: {error}") from None
    trained_voxel_size = extra.get("voxel_size")
    if trained_voxel_size is None:
        raise InputError(f"predict.checkpoint {predict.checkpoint} records no voxel size it was trained for")
    if Coordinate(trained_voxel_size) != raw.voxel_size:
        raise InputError(
            f"raw {config.datasets.raw} has voxels of {tuple(raw.voxel_size)} nm, but the model in "
            f"{predict.checkpoint} was trained on {tuple(trained_voxel_size)} nm"
        )
    if any(t % m for t, m in zip(predict.tile_shape, model.input_multiple)):
        raise InputError(
            f"predict.tile_shape {predict.tile_shape} is not a multiple of the model's input multiple {model.input_multiple}"
        )
    return raw.voxel_size, raw.roi, model_config.offsets


def _volume_roi(config: RunConfig, source_roi: Roi, voxel_size: Coordinate, source: str) -> Roi:
    if config.roi is None:
        return source_roi
    volume_roi = Roi(config.roi.offset, config.roi.shape)
    _require_multiple("roi.offset", volume_roi.offset, voxel_size)
    _require_multiple("roi.shape", volume_roi.shape, voxel_size)
    if not source_roi.contains(volume_roi):
        raise InputError(f"roi {volume_roi} lies outside the {source}' ROI {source_roi}")
    return volume_roi


def _predict_geometry(config: RunConfig, voxel_size: Coordinate, block_size: Coordinate) -> tuple[Coordinate, Coordinate]:
    """Predict blocks are whole numbers of tile cores, so every block lays its tiles on the
    volume-wide tile grid."""
    core = Coordinate(config.predict.tile_core) * voxel_size
    if config.predict.block_size is None:
        predict_block = Coordinate(-(-b // c) * c for b, c in zip(block_size, core))
    else:
        predict_block = Coordinate(config.predict.block_size)
        _require_multiple("predict.block_size", predict_block, core, "the tile core (tile_shape - 2 * tile_context)")
    return predict_block, Coordinate(config.predict.tile_context) * voxel_size


MIN_CONTEXT_VOXELS = 2
#: What the fidelity benchmark needs for block-wise to equal one block at every threshold, from
#: 16^3 to 128^3 voxel blocks: a watershed basin is seen whole enough this far beyond a face.
DEFAULT_CONTEXT_VOXELS = 8


def default_context(block_size: Coordinate, voxel_size: Coordinate) -> Coordinate:
    return Coordinate((DEFAULT_CONTEXT_VOXELS,) * len(block_size)) * voxel_size


def _stitching_context(config: RunConfig, volume_roi: Roi, voxel_size: Coordinate, block_size: Coordinate) -> Coordinate:
    """Where a volume has several blocks along an axis, the fragments watershed must see beyond
    the faces between them, to tell a basin the face cut from two basins."""
    if config.blocks.context is None:
        return default_context(block_size, voxel_size)
    context = Coordinate(config.blocks.context)
    _require_multiple("blocks.context", context, voxel_size)
    for axis, (c, v, b, s) in enumerate(zip(context, voxel_size, block_size, volume_roi.shape)):
        if s > b and c < MIN_CONTEXT_VOXELS * v:
            raise InputError(
                f"blocks.context {tuple(context)} nm: along axis {'zyx'[axis]} the volume has several blocks, and "
                f"stitching them needs at least {MIN_CONTEXT_VOXELS} voxels ({MIN_CONTEXT_VOXELS * v} nm) of context; "
                f"leave blocks.context out for the default ({tuple(default_context(block_size, voxel_size))} nm here)"
            )
    return context


def task_ids(config: RunConfig) -> dict[str, str]:
    """Stage name -> task id. A task's id carries a fingerprint of everything its output depends
    on (its config sections, and its upstream task's fingerprint), so changing a parameter starts
    that task and everything downstream afresh, while an unchanged rerun skips every finished block."""
    ids, upstream = {}, ""
    for stage in stages_for(config):
        upstream = hashlib.sha256((upstream + config.fingerprint(*stage.sections)).encode()).hexdigest()[:10]
        ids[stage.name] = f"{stage.name}-{upstream}"
    return ids


def _task_layout(stage: Stage, task_id: str, plan: RunPlan) -> TaskLayout:
    total_roi, read_roi, write_roi = stage.layout(plan)
    return TaskLayout(task_id, stage.name, stage.block_function, total_roi, read_roi, write_roi)


def plan_run(config: RunConfig, check_database: bool = True) -> RunPlan:
    if config.work_dir.exists() and not config.work_dir.is_dir():
        raise InputError(f"work_dir {config.work_dir} is a file, not a directory")
    if config.predict is not None:
        voxel_size, source_roi, offsets = _predicted_affinities(config)
        source = "raw"
    else:
        voxel_size, source_roi, offsets, affinities = _input_affinities(config)
        source = "affinities"
    try:
        nearest_channels = nearest_neighbour_channels(offsets)
    except ValueError as error:
        raise InputError(f"{source} {getattr(config.datasets, source)}: {error}") from None
    volume_roi = _volume_roi(config, source_roi, voxel_size, source)

    block_size = Coordinate(config.blocks.block_size)
    _require_multiple("blocks.block_size", block_size, voxel_size)
    context = _stitching_context(config, volume_roi, voxel_size, block_size)
    predict_block, predict_context = (None, None)
    if config.predict is not None:
        predict_block, predict_context = _predict_geometry(config, voxel_size, block_size)
        affinities = StoredArray(config.datasets.affinities, volume_roi, voxel_size, (len(offsets),))

    arrays = {"affinities": affinities}
    if config.datasets.raw is not None:
        raw = _check_input(config.datasets.raw, "raw", (np.dtype(np.uint8),), voxel_size, volume_roi, source)
        arrays["raw"] = StoredArray.of(config.datasets.raw, raw)
    if config.datasets.ground_truth is not None:
        _check_input(config.datasets.ground_truth, "ground truth", LABEL_DTYPES, voxel_size, volume_roi, source)

    plan = RunPlan(
        config=config, volume_roi=volume_roi, voxel_size=voxel_size, block_size=block_size, context=context,
        arrays=arrays, affinity_offsets=offsets, nearest_affinity_channels=nearest_channels,
        predict_block_size=predict_block, predict_context=predict_context,
    )
    ids = task_ids(config)
    for stage in stages_for(config):
        plan.tasks[ids[stage.name]] = _task_layout(stage, ids[stage.name], plan)
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
    chunks = array._source_data.chunks
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


def _outputs_by_task(plan: RunPlan) -> list[tuple[str, OutputArray]]:
    """The planned task ids, not fingerprints worked out again (that hashes the model's bytes)."""
    ids = {task.stage: task_id for task_id, task in plan.tasks.items()}
    return [(ids[stage.name], output) for stage in stages_for(plan.config) for output in stage.outputs(plan)]


def overwritten_outputs(plan: RunPlan) -> dict[str, str]:
    """Task id -> which of its outputs another task (another config into the same datasets)
    wrote since: that task's finished blocks are no longer in its output."""
    overwritten = {}
    for task_id, output in _outputs_by_task(plan):
        if dataset_exists(output.path):
            writer = array_attrs(open_array(output.path)).get(WRITER_ATTRIBUTE)
            if writer is not None and writer != task_id:
                overwritten.setdefault(task_id, f"{output.role} {output.path} was last written by task {writer}")
    return overwritten


def prepare_outputs(plan: RunPlan) -> None:
    """Create the missing output arrays, and record in each which task writes it; existing ones
    (a resumed run) were checked by ``plan_run`` and keep their voxels."""
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    for task_id, output in _outputs_by_task(plan):
        if dataset_exists(output.path):
            open_array(output.path, mode="r+")._source_data.attrs[WRITER_ATTRIBUTE] = task_id
        else:
            create_array(
                output.path, plan.volume_roi, plan.voxel_size, output.dtype,
                channels=output.channels[0] if output.channels else None,
                chunk_voxels=output_chunk_voxels(output.block_size, plan.voxel_size),
                attrs={**output.attrs, WRITER_ATTRIBUTE: task_id},
            )
