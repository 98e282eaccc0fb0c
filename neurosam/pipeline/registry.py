"""The registry of stages: the one list of them, in pipeline order.

Each stage declares itself in its own module under ``neurosam/stages/`` (``STAGE``); the scheduler
builds every daisy task from these declarations, and the worker imports the block function by
its ``module:function`` name. Adding a stage is one module and one ``register`` call (plus a
config section named after it, if it has parameters).
"""

from __future__ import annotations

from neurosam.config import RunConfig
from neurosam.stages import contacts, evaluate, fragments, ground_truth_skeletons, meshes, predict, relabel, segment, skeletons
from neurosam.stages.stage import Stage

STAGES: list[Stage] = [
    predict.STAGE, fragments.STAGE, contacts.STAGE, segment.STAGE, relabel.STAGE,
    meshes.STAGE, meshes.JOIN_STAGE, skeletons.STAGE, skeletons.JOIN_STAGE,
    ground_truth_skeletons.STAGE, evaluate.STAGE,
]


def register(stage: Stage, after: str | None = None) -> None:
    """Add a stage to the registry, after the stage named ``after`` (default: at the end)."""
    if any(existing.name == stage.name for existing in STAGES):
        raise ValueError(f"a stage named {stage.name!r} is registered already")
    position = len(STAGES) if after is None else [s.name for s in STAGES].index(after) + 1
    STAGES.insert(position, stage)


def stage_names() -> list[str]:
    return [stage.name for stage in STAGES]


def stages_for(config: RunConfig) -> list[Stage]:
    return [stage for stage in STAGES if stage.enabled(config)]
