"""The registry is the only place a stage is named: a stage registered from outside the package
runs through the same scheduler, resume and status, with no other edit."""

from __future__ import annotations

import numpy as np

from neurosam.config import load_config
from neurosam.io.volumes import open_array
from neurosam.pipeline import registry
from neurosam.pipeline.run import run_pipeline, run_status
from pipeline_support import gala_inputs, write_config


def test_a_registered_stage_runs_through_the_scheduler(tmp_path, register_stage):
    register_stage("census", "census_blocks")

    inputs = {"affinities": gala_inputs(tmp_path / "inputs")["affinities"]}
    config_path = write_config(tmp_path / "run", inputs, (250, 500, 1000), (50, 50, 50), segment={"thresholds": [0.5]})
    summary = run_pipeline(config_path, echo_progress=False)

    census = next(task for task in summary["tasks"] if task.startswith("census-"))
    assert list(summary["tasks"]).index(census) == 1
    assert summary["tasks"][census]["completed"] == summary["tasks"][census]["blocks"] == 8
    fragments = open_array(load_config(config_path).datasets.fragments)
    counted = sum(int(path.read_text()) for path in (tmp_path / "run" / "census").iterdir())
    assert counted == np.count_nonzero(fragments[fragments.roi])
    assert (census, 8, 8) in run_status(config_path)
    again = run_pipeline(config_path, echo_progress=False)
    assert again["tasks"][census]["skipped_as_done"] == 8


def test_only_the_predict_stage_imports_torch():
    """Post-processing workers start without torch (seconds of import and hundreds of MB)."""
    import subprocess
    import sys

    modules = [stage.block_function.split(":")[0] for stage in registry.STAGES if stage.name != "predict"]
    script = "import sys\n" + "".join(f"import {m}\n" for m in modules + ["neurosam.pipeline.worker_process", "neurosam.pipeline.run"])
    script += "assert 'torch' not in sys.modules, 'torch imported'\n"
    subprocess.run([sys.executable, "-c", script], check=True)
