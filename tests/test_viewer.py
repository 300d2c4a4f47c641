"""The web viewer (nerflib/viewer.py) on a trained toy model, in headless Chromium.

The toy model is tests/helpers/toymodel.py's (trained once per session, in a subprocess); the viewer runs in this process, in
the background (its server and render threads), and a headless Chromium (tests/browser.py's
set-up: Debian's chromium and chromium-driver) opens it: a frame arrives, changes when the camera
is dragged, two keyframes are added and saved with the page's buttons, and the saved path file
rendered by steps.render (what rule render runs) matches a render of the same cameras by hand.
"""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
from helpers import browser

pytest.importorskip("viser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 60.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} (after {timeout} s)")


@pytest.fixture(scope="module")
def viewer(toy_model):
    from nerflib import viewer as viewer_lib

    options = viewer_lib.ViewerOptions(port=_free_port(), max_size=96, preview_size=24, settle_s=0.2,
                                       path_out=str(toy_model / "viewer" / "flight.json"), keyframe_seconds=0.25, fps=4)
    v = viewer_lib.Viewer(toy_model / "model", toy_model / "data" / "scene.json", options=options, log=lambda m: None)
    v.start()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def page(viewer):
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=800,600"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts)
    driver.get(f"http://127.0.0.1:{viewer.port}")
    yield driver
    driver.quit()


def _still_frame(viewer, after: int):
    """Wait until a full-size frame newer than frame number `after` has been sent and the camera is still."""
    def done():
        states = list(viewer._clients.values())
        return (viewer.frames_sent > after and states and all(
            s["shown_size"] == viewer.options.max_size and not s["dirty"] for s in states))

    _wait(done, "no full-size frame arrived")
    time.sleep(1.0)  # the browser draws it


def _canvas_pixels(driver) -> np.ndarray:
    """The lower-left part of the page (the rendered background; the control panel is on the right)."""
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), np.float64)
    h, w = shot.shape[:2]
    return shot[h // 2:, : w // 3]


def _button(driver, text):
    from selenium.webdriver.common.by import By

    return next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == text)


def test_frames_arrive_and_follow_the_camera(viewer, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _still_frame(viewer, 0)
    client = next(iter(viewer._clients.values()))["client"]
    before_pose = np.array(client.camera.position)
    before = _canvas_pixels(page)
    assert before.std() > 5  # a rendered image, not a blank page
    sent = viewer.frames_sent
    canvas = max(page.find_elements(By.TAG_NAME, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
    ActionChains(page).move_to_element_with_offset(canvas, -200, 0).click_and_hold().move_by_offset(60, 10) \
        .move_by_offset(60, 10).release().perform()
    _still_frame(viewer, sent)
    assert np.linalg.norm(np.array(client.camera.position) - before_pose) > 1e-3  # the drag orbited the camera
    after = _canvas_pixels(page)
    assert np.abs(after - before).mean() > 2.0  # the picture changed with it
    assert viewer.frames_sent >= sent + 2  # a preview while moving, then the full-size frame


def test_colour_depth_and_accumulation_differ(viewer):
    c2w = viewer.frame.c2w[viewer.frame.train[0]]
    images = {o: viewer.render(c2w, 0.8, 4 / 3, 32, o) for o in ("colour", "depth", "accumulation")}
    assert all(im.shape == (24, 32, 3) and im.dtype == np.uint8 for im in images.values())
    assert not np.array_equal(images["colour"], images["depth"])
    acc = images["accumulation"]
    assert np.array_equal(acc[..., 0], acc[..., 1])  # grey


def test_keyframes_saved_from_the_page_render_through_the_step(viewer, page, toy_model):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from nerflib import camera_path, evaluate, steps, video
    from nerflib import cameras as cam_lib
    from nerflib.types import Camera

    _button(page, "Clear keyframes").click()
    _wait(lambda: not viewer.keyframes, "keyframes not cleared")
    _button(page, "Add keyframe").click()
    _wait(lambda: len(viewer.keyframes) == 1, "first keyframe not added")
    canvas = max(page.find_elements(By.TAG_NAME, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
    ActionChains(page).move_to_element_with_offset(canvas, -200, 50).click_and_hold().move_by_offset(-80, 0) \
        .release().perform()
    _wait(lambda: not np.allclose(next(iter(viewer._clients.values()))["client"].camera.position,
                                  viewer.keyframes[0]["c2w"][:, 3]), "the camera did not move")
    _button(page, "Add keyframe").click()
    _wait(lambda: len(viewer.keyframes) == 2, "second keyframe not added")
    _button(page, "Save path").click()
    path = toy_model / "viewer" / "flight.json"
    _wait(path.is_file, "the path file was not saved")
    d = json.loads(path.read_text())
    assert [k["time"] for k in d["keyframes"]] == [0.0, 0.25] and d["fps"] == 4.0
    cp = camera_path.read_path(path)
    assert len(cp.c2w) == 2  # 0.25 s at 4 fps: the two keyframes

    steps.render(toy_model / "data" / "scene.json", None, model_dir=toy_model / "model",
                 out_dir=toy_model / "viewer" / "flight", path=str(path))
    meta = json.loads((toy_model / "viewer" / "flight" / "path.json").read_text())
    assert meta["n_frames"] == 2 and meta["path"] == "file"
    for k, key in enumerate(viewer.keyframes):  # by hand: the viewer's own record of each keyframe's camera
        w, h = cp.width, cp.height
        f = 0.5 * h / np.tan(np.radians(key["fov"]) / 2)
        rays = cam_lib.generate_rays(Camera("PINHOLE", w, h, (f, f, w / 2, h / 2)), key["c2w"],
                                     near=viewer.frame.near, far=viewer.frame.far)
        by_hand = evaluate.render_image(viewer.model, viewer.params, rays, chunk_size=viewer.cfg.render_chunk_size,
                                        mesh=viewer.mesh, render_fn=viewer.render_fn)
        frame = video.read_png(video.frame_paths(toy_model / "viewer" / "flight", k, 2)["color"]).astype(int)
        assert frame.shape == (h, w, 3)
        assert np.abs(frame - np.rint(np.clip(by_hand["rgb"], 0, 1) * 255)).max() <= 1


def test_a_newer_checkpoint_is_picked_up(toy_model, tmp_path):
    """A training run's next checkpoint replaces the shown model (the render thread calls this every reload_s)."""
    import shutil

    from nerflib import viewer as viewer_lib

    model = tmp_path / "model"
    shutil.copytree(toy_model / "model", model)
    later = tmp_path / "later"
    steps = sorted(int(p.name) for p in (model / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 2, steps
    shutil.move(model / "checkpoints" / str(steps[-1]), later)  # as if training had not got there yet
    v = viewer_lib.Viewer(model, toy_model / "data" / "scene.json", log=lambda m: None)
    assert v.step == steps[-2] and not v.reload_if_newer()
    c2w = v.frame.c2w[v.frame.train[0]]
    before = v.render(c2w, 0.8, 4 / 3, 32)
    shutil.move(later, model / "checkpoints" / str(steps[-1]))  # the next checkpoint arrives
    assert v.reload_if_newer() and v.step == steps[-1]
    assert not np.array_equal(v.render(c2w, 0.8, 4 / 3, 32), before)
