"""Predict: the network's affinities for each block of raw, written as uint8 with their offsets.

A worker loads the model once, on its own GPU where there is one (``workers_per_gpu`` workers
share a GPU, in bf16), else on the CPU in fp32 with its share of the cores. A block's raw is read
row of tiles by row in background threads, ahead of the network. Each block covers whole
tile cores of the volume-wide tile grid and is read with the tile context around it, mirrored at
the volume's borders, so block-wise prediction equals whole-volume prediction.

Only this stage's workers import torch: the planner reads the checkpoint through
``predicted_affinities``, which imports it when called.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import to_uint8
from neurosam.config import RunConfig
from neurosam.io.volumes import describe, open_array
from neurosam.layout import RunPlan, WorkerSetup, predict_timings_dir
from neurosam.model.tiles import tile_counts
from neurosam.stages.stage import InputError, Layout, OutputArray, Stage, blocks_with_context, require_multiple


def predicted_affinities(config: RunConfig) -> tuple[Coordinate, Roi, list[list[int]]]:
    """(voxel size, ROI, offsets) of the affinities this run predicts from the raw with the
    configured checkpoint, which is read here in full, so a missing, corrupt or mismatched file
    fails before any block."""
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
    check_slice_scale(predict, model, extra)
    return raw.voxel_size, raw.roi, model_config.offsets


def check_slice_scale(predict, model, extra: dict) -> None:
    """A SAM2-guided model sees tiles' slices at the scale it was trained at, or not at all: its
    features at another scale are not the ones it learned to use."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    try:
        scale = backbone.pixels_per_voxel(*predict.tile_shape[1:])
    except ValueError as error:
        raise InputError(f"predict.tile_shape {tuple(predict.tile_shape)}: {error}") from None
    trained = extra.get("slice_scale")
    if trained is not None and not np.allclose(scale, trained):
        raise InputError(
            f"predict.tile_shape {tuple(predict.tile_shape)} shows the slice encoder {[round(s, 4) for s in scale]} px per voxel, "
            f"but {predict.checkpoint} was trained at {[round(s, 4) for s in trained]}: use tiles of the training patch's "
            f"in-plane size, or a model trained with model.sam2.pixels_per_voxel"
        )


def tile_core(plan: RunPlan) -> Coordinate:
    """nm of a tile's core: the part of its prediction kept."""
    return Coordinate(plan.config.predict.tile_core) * plan.voxel_size


def tile_context(plan: RunPlan) -> Coordinate:
    """nm read around the tiles of a block, where the network lacks context."""
    return Coordinate(plan.config.predict.tile_context) * plan.voxel_size


def block_size(plan: RunPlan) -> Coordinate:
    """Predict blocks are whole numbers of tile cores, so every block lays its tiles on the
    volume-wide tile grid; by default ``blocks.block_size`` rounded up to whole cores."""
    core = tile_core(plan)
    if plan.config.predict.block_size is None:
        return Coordinate(-(-b // c) * c for b, c in zip(plan.block_size, core))
    size = Coordinate(plan.config.predict.block_size)
    require_multiple("predict.block_size", size, core, "the tile core (tile_shape - 2 * tile_context)")
    return size


def predict_layout(plan: RunPlan) -> Layout:
    return blocks_with_context(block_size(plan), tile_context(plan), plan.volume_roi)


def affinities_output(plan: RunPlan) -> list[OutputArray]:
    affinities = plan.arrays["affinities"]
    return [
        OutputArray(
            "affinities", affinities.path, np.uint8, block_size(plan), affinities.channels,
            {"offsets": plan.affinity_offsets},
        )
    ]


def choose_device(setup: WorkerSetup):
    """``auto``: this worker's GPU (worker index // workers_per_gpu, over the GPUs it sees),
    else the CPU."""
    import torch

    settings = setup.settings
    if settings.device == "auto" and torch.cuda.is_available():
        return torch.device("cuda", (setup.index // settings.workers_per_gpu) % torch.cuda.device_count())
    return torch.device("cpu" if settings.device == "auto" else settings.device)


def cpu_threads(setup: WorkerSetup) -> int:
    """The cores this process may use, shared among the task's local workers (a SLURM job has
    its own cores)."""
    config = setup.plan.config
    if setup.settings.threads_per_worker is not None:
        return setup.settings.threads_per_worker
    cores = len(os.sched_getaffinity(0))
    workers = config.workers.count_for("predict") if config.workers.launcher == "local" else 1
    return max(1, cores // workers)


def tile_rows(write_roi: Roi, core: Coordinate, context: Coordinate) -> list[Roi]:
    """The raw each row of a block's tiles reads (one tile core deep in z, every tile in y and
    x, with context around): whole cores covering the write ROI, so the rows lie on the
    volume-wide tile grid."""
    counts = Coordinate(tile_counts(write_roi.shape, core))
    row_shape = Coordinate(core[0], counts[1] * core[1], counts[2] * core[2]) + context * 2
    return [
        Roi(write_roi.offset - context + Coordinate(row * core[0], 0, 0), row_shape)
        for row in range(counts[0])
    ]


class BlockPredictor:
    """Predicts a block row of tiles by row, reading ``read_ahead`` rows of raw in background
    threads while the network works, and writes the block's uint8 affinities. Seconds spent
    reading (in the threads), waiting for reads, in the network and writing are kept in
    ``seconds``."""

    def __init__(self, setup: WorkerSetup, model, device, autocast_dtype, reader: ThreadPoolExecutor):
        self.settings = setup.settings
        self.plan = setup.plan
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.reader = reader
        self.core = tile_core(setup.plan)
        self.context = tile_context(setup.plan)
        self.seconds = {"read": 0.0, "waiting for reads": 0.0, "compute": 0.0, "write": 0.0}
        self.blocks = 0
        self.transforms = self._transforms()

    def _transforms(self):
        from neurosam.model.inference import TileTransform, tile_transforms

        if not self.settings.test_time_augmentation:
            return [TileTransform()]
        return tile_transforms(self.plan.affinity_offsets, self.settings.tile_context)

    def read(self, roi: Roi) -> np.ndarray:
        from neurosam.model.inference import normalise

        started = time.perf_counter()
        raw = normalise(self.plan.arrays["raw"].read_mirrored(roi), self.settings.raw_range)
        self.seconds["read"] += time.perf_counter() - started
        return raw

    def __call__(self, block) -> None:
        from neurosam.model.inference import predict_tiles

        rows = tile_rows(block.write_roi, self.core, self.context)
        reads: deque[Future] = deque(self.reader.submit(self.read, roi) for roi in rows[: self.settings.read_ahead])
        predicted = []
        for next_row in range(len(rows)):
            started = time.perf_counter()
            raw = reads.popleft().result()
            if next_row + self.settings.read_ahead < len(rows):
                reads.append(self.reader.submit(self.read, rows[next_row + self.settings.read_ahead]))
            computing = time.perf_counter()
            self.seconds["waiting for reads"] += computing - started
            predicted.append(
                predict_tiles(
                    self.model, raw, self.settings.tile_shape, self.settings.tile_context,
                    self.device, self.autocast_dtype, self.settings.tile_batch, self.transforms, self.plan.affinity_offsets,
                )
            )
            self.seconds["compute"] += time.perf_counter() - computing
        writing = time.perf_counter()
        shape = block.write_roi.shape / self.plan.voxel_size
        probabilities = np.concatenate(predicted, axis=1)[(slice(None), *(slice(0, s) for s in shape))]
        self.plan.arrays["affinities"].write(block.write_roi, to_uint8(probabilities))
        self.seconds["write"] += time.perf_counter() - writing
        self.blocks += 1


@contextmanager
def predict_blocks(setup: WorkerSetup):
    import torch

    from neurosam.model.build import load_model

    device = choose_device(setup)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(setup))
    model, _, _ = load_model(setup.settings.checkpoint, map_location=device)
    model.eval()
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    reader = ThreadPoolExecutor(max_workers=setup.settings.read_ahead, thread_name_prefix="raw-reader")
    predictor = BlockPredictor(setup, model, device, autocast_dtype, reader)
    try:
        yield predictor
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        write_timings(setup, device, predictor)


def write_timings(setup: WorkerSetup, device, predictor: BlockPredictor) -> None:
    """Where each worker's time went, one JSON file per worker process, beside the worker logs."""
    directory = predict_timings_dir(setup.plan.work_dir)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"task": setup.task.task_id, "worker": setup.index, "device": str(device), "blocks": predictor.blocks}
    record["seconds"] = {name: round(seconds, 4) for name, seconds in predictor.seconds.items()}
    (directory / f"worker-{setup.index}-{os.getpid()}.json").write_text(json.dumps(record))


STAGE = Stage(
    "predict", "neurosam.stages.predict:predict_blocks", predict_layout,
    sections=("datasets", "roi", "predict"),
    enabled=lambda config: config.predict is not None,
    outputs=affinities_output,
    reads=("raw",),
)
