"""Ground-truth skeletons: one connected skeleton per ground-truth neuron, for evaluate's
expected run length (ERL), made with the skeletons stage's own block and join functions on the
ground truth at full resolution (each block read with one voxel of its upper neighbours) and
kept in the work dir as precomputed skeletons.

They depend on the ground truth and this section alone, so the task id leaves the stages
before it out: a run at other thresholds or parameters keeps them, and evaluate only reads
them. It runs as two tasks, the blocks and then their join. Skeletons given in
``datasets.ground_truth_skeletons`` replace the stage.
"""

from __future__ import annotations

from contextlib import contextmanager

from neurosam.layout import RunPlan, WorkerSetup, ground_truth_skeletons_dir, pieces_dir
from neurosam.stages.evaluate import check_ground_truth
from neurosam.stages.pieces import join_layout
from neurosam.stages.skeletons import joined_skeletons, skeletonised_blocks
from neurosam.stages.stage import Stage, Step, blocks_with_context


@contextmanager
def ground_truth_skeleton_blocks(setup: WorkerSetup):
    plan = setup.plan
    yield skeletonised_blocks(plan, setup.task.task_id, plan.arrays["ground_truth"], plan.voxel_size, setup.settings)


@contextmanager
def join_ground_truth_skeletons(setup: WorkerSetup):
    plan = setup.plan
    pieces = pieces_dir(plan.work_dir, plan.tasks_of_stage("ground_truth_skeletons")[0].task_id)
    yield joined_skeletons(pieces, ground_truth_skeletons_dir(plan.config), setup.settings)


def steps(plan: RunPlan) -> list[Step]:
    module = "neurosam.stages.ground_truth_skeletons"
    return [
        Step("blocks", blocks_with_context(plan.block_size, plan.voxel_size, plan.volume_roi), 0, f"{module}:ground_truth_skeleton_blocks"),
        Step("join", join_layout(plan), 0, f"{module}:join_ground_truth_skeletons"),
    ]


def _enabled(config) -> bool:
    return config.datasets.ground_truth is not None and config.evaluate.erl and config.datasets.ground_truth_skeletons is None


STAGE = Stage(
    "ground_truth_skeletons", "neurosam.stages.ground_truth_skeletons:ground_truth_skeleton_blocks",
    lambda plan: steps(plan)[0].layout, sections=("ground_truth_skeletons",), enabled=_enabled, steps=steps,
    check_inputs=check_ground_truth, reads=("ground_truth",), uses_upstream=False,
    work_files=lambda plan: [ground_truth_skeletons_dir(plan.config) / "info"],
)
