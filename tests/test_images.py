"""The container images: scripts/build_images.sh builds the CPU image with buildah and runs, inside it,
the demo and a fast subset of the tests. Opt-in (NEUROSAM_TEST_IMAGES=1, as root): it debootstraps
a Debian base and installs every dependency, many minutes the first time (docker/README.md)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_images.sh"

pytestmark = pytest.mark.skipif(
    os.environ.get("NEUROSAM_TEST_IMAGES") != "1",
    reason="builds the container images for many minutes: set NEUROSAM_TEST_IMAGES=1 (root; see docker/README.md)",
)


def section(output: str, start: str, end: str | None = None) -> str:
    """The script's output from the step header containing `start` to the one containing `end`."""
    begin = output.index(start)
    return output[begin : output.index(end, begin) if end else len(output)]


def test_cpu_image_runs_the_demo_and_the_tests_inside():
    result = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-only"], capture_output=True, text=True, timeout=3 * 3600, cwd=REPO
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    demo = section(output, "4a. demo inside the CPU image", "4b. ")
    assert re.search(r"^at the chosen threshold [0-9.]+ \(chosen on a validation crop\): VOI [0-9.]+", demo, re.M), demo[-3000:]
    assert re.search(r"^best threshold [0-9.]+: VOI [0-9.]+, adapted Rand error [0-9.]+ \(picked on this crop itself\)$", demo, re.M)
    assert "/opt/neurosam/runs/demo/evaluation.json" in demo

    compiled = section(output, "4b. waterz compiles", "4c. ")
    assert "compiled and ran" in compiled, compiled[-3000:]

    tests = section(output, "4c. tests inside the CPU image")
    summary = re.search(r"^(\d+) passed(, \d+ warnings?)? in [0-9.]+s$", tests, re.M)
    assert summary and int(summary.group(1)) > 0, tests[-3000:]
    assert not re.search(r"\d+ (failed|errors?)\b", tests), tests[-3000:]
