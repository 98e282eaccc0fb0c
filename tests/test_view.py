"""`neurosam view` in a real browser: a finished run served to neuroglancer and drawn by headless
Chromium (Debian's chromium and chromium-driver; nothing is downloaded). Without them the test
fails rather than skips, so a machine that cannot show a run is never reported green."""

from __future__ import annotations

import json
import time

import neuroglancer
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from neurosam.config import load_config
from neurosam.io.volumes import open_storage
from neurosam.layout import segmentation_path
from neurosam.pipeline.run import run_pipeline
from neurosam.view import default_threshold, open_viewer
from pipeline_support import gala_inputs, write_config

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1024,768",
        "--enable-unsafe-swiftshader",  # WebGL in software: Chromium no longer falls back to it unasked
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()
    neuroglancer.stop()


def saturated(pixels: np.ndarray) -> float:
    """The fraction of strongly coloured pixels: segment colours make them, grey raw never does."""
    return float(np.mean(pixels.max(axis=-1) - pixels.min(axis=-1) > 60))


def screenshot(driver, path, drawn) -> np.ndarray:
    """Screenshots until ``drawn(pixels)`` or a minute has passed (chunks arrive over time); the
    last one stays at ``path``."""
    deadline = time.monotonic() + 60
    while True:
        driver.save_screenshot(str(path))
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        if drawn(pixels) or time.monotonic() > deadline:
            return pixels
        time.sleep(1)


def test_viewer_draws_the_segmentation_and_shows_both_ids(tmp_path, browser):
    config_path = write_config(tmp_path / "run", gala_inputs(tmp_path), (250, 500, 1000), (50, 50, 50))
    run_pipeline(config_path, echo_progress=False)
    config = load_config(config_path)
    threshold = default_threshold(config)
    assert threshold == float(json.loads((config.work_dir / "evaluation.json").read_text())["best_threshold"])
    segmentation = f"segmentation {threshold:.4f}"

    viewer = open_viewer(config, threshold)
    assert viewer.get_viewer_url().startswith("http://127.0.0.1:")
    assert [layer.name for layer in viewer.state.layers] == ["raw", "affinities", "fragments", segmentation, "ground truth"]

    def show(*names):
        """One xy section (10 nm voxels, 5 pixels each) of only the named layers, without UI."""
        with viewer.txn() as state:
            state.layout = "xy"
            state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[10, 10, 10])
            state.cross_section_scale = 0.2
            state.show_axis_lines = False
            state.show_default_annotations = False
            for layer in state.layers:
                layer.visible = layer.name in names

    with viewer.config_state.txn() as config_state:
        config_state.show_ui_controls = False
        config_state.show_panel_borders = False
    show("raw", segmentation)
    browser.get(viewer.get_viewer_url())
    coloured = screenshot(browser, tmp_path / "segmentation.png", lambda pixels: saturated(pixels) > 0.3)
    assert saturated(coloured) > 0.3, f"segmentation layer did not draw: see {tmp_path / 'segmentation.png'}"

    show("raw")
    grey = screenshot(browser, tmp_path / "raw.png", lambda pixels: saturated(pixels) < 0.01 and pixels.std() > 20)
    assert saturated(grey) < 0.01 and grey.std() > 20, f"raw alone did not draw grey: see {tmp_path / 'raw.png'}"

    # Ctrl+right-click pins the selection: the voxel under the cursor with every visible layer's value.
    show("fragments", segmentation)
    ActionChains(browser).move_to_element(browser.find_element("tag name", "body")).key_down(Keys.CONTROL).context_click().key_up(Keys.CONTROL).perform()
    deadline = time.monotonic() + 30
    while not {"fragments", segmentation} <= set(viewer.state.to_json().get("selection", {}).get("layers", {})):
        assert time.monotonic() < deadline, f"no pinned selection: {viewer.state.to_json().get('selection')}"
        time.sleep(0.5)
    selection = viewer.state.to_json()["selection"]
    x, y, z = np.floor(selection["position"]).astype(int)
    shown = {name: int(selection["layers"][name]["value"]) for name in ("fragments", segmentation)}
    stored = {
        name: int(open_storage(path)[z, y, x])
        for name, path in (("fragments", config.datasets.fragments), (segmentation, segmentation_path(config, threshold)))
    }
    assert shown == stored


def test_viewer_opens_on_raw_and_the_segmentation_with_meshes(tmp_path, browser):
    """As a user first sees it: raw and the segmentation drawn in a large xy section at the
    volume's centre, the other layers hidden, the largest segments' meshes in the 3D view."""
    from test_neurons import SHAPE, VOXEL_SIZE, tubes

    from neurosam.affinities import NEAREST_OFFSETS, labels_to_affinities
    from neurosam.io.precomputed import export_precomputed
    from neurosam.view import serve_directory
    from pipeline_support import read_segmentation, write_inputs

    labels = tubes()
    raw = np.where(labels > 0, 170, 60).astype(np.uint8) + np.random.default_rng(0).integers(0, 30, SHAPE, dtype=np.uint8)
    inputs = write_inputs(tmp_path / "inputs", labels_to_affinities(labels, NEAREST_OFFSETS)[0], labels, VOXEL_SIZE, raw)
    block = tuple(s * v // 2 for s, v in zip(SHAPE, VOXEL_SIZE))
    config_path = write_config(tmp_path / "run", inputs, block, None, segment={"thresholds": [0.5]}, meshes={}, skeletons={})
    run_pipeline(config_path, echo_progress=False)
    config = load_config(config_path)
    segmentation = f"segmentation {0.5:.4f}"

    viewer = open_viewer(config, 0.5)
    with viewer.config_state.txn() as config_state:
        config_state.show_ui_controls = False
        config_state.show_panel_borders = False
    with viewer.txn() as state:
        state.show_slices = False  # the 3D view shows meshes alone, so its colour is theirs
        state.show_axis_lines = False
    browser.get(viewer.get_viewer_url())

    def drawn(pixels):
        width = pixels.shape[1]
        return saturated(pixels[:, : width * 3 // 4 - 10]) > 0.05 and saturated(pixels[:, width * 3 // 4 + 10 :]) > 0.01

    pixels = screenshot(browser, tmp_path / "opened.png", drawn)
    assert drawn(pixels), f"the xy section or the 3D meshes did not draw: see {tmp_path / 'opened.png'}"
    state = viewer.state
    assert {layer.name for layer in state.layers if layer.visible} == {"raw", segmentation}
    assert {layer.name for layer in state.layers if not layer.visible} == {"affinities", "fragments", "ground truth"}
    sections, view_3d = state.layout.children
    assert (sections.layout.type, view_3d.layout.type) == ("xy", "3d") and sections.flex > view_3d.flex
    assert list(state.position) == [s / 2 for s in SHAPE[::-1]]
    neuron = int(read_segmentation(config, 0.5)[16, 32, 32])
    assert neuron in {int(segment) for segment in state.layers[segmentation].segments}

    # The precomputed export, as neuroglancer reads it over HTTP: the section and the mesh draw.
    export_precomputed(config, 0.5, tmp_path / "export")
    with viewer.txn() as state:
        state.layers.clear()
        state.layers.append(
            name="export", layer=neuroglancer.SegmentationLayer(source=f"precomputed://{serve_directory(tmp_path / 'export')}", segments=[neuron])
        )
        state.layout = "xy-3d"

    def halves_drawn(pixels):
        width = pixels.shape[1]
        return saturated(pixels[:, : width // 2 - 10]) > 0.02 and saturated(pixels[:, width // 2 + 10 :]) > 0.02

    pixels = screenshot(browser, tmp_path / "export.png", halves_drawn)
    assert halves_drawn(pixels), f"the export's section or mesh did not draw: see {tmp_path / 'export.png'}"
