"""A web viewer of a trained (or training) radiance field, on viser: `nerf view MODEL_DIR`.

Open http://HOST:PORT in a browser. The viewer renders the field from the browser's camera
(progressively: a frame of at most `preview_size` pixels on its longer side while the camera
moves, then one of `max_size` once it has been still for `settle_s`), shows the training
cameras and the sparse SfM points, switches between colour, depth and accumulation, picks up
each new checkpoint of the model folder (every `reload_s`, so it follows a training run), and
records keyframes into a camera path file (nerflib.camera_path: our JSON, poses in the scene's
original frame) that `nerf render --path FILE` or the sheet's `render_path` renders.

The 3D scene is shown in the model's (training) frame: for 360 captures the cameras lie in the
unit ball and +z is up (scene_io.normalize_scene), which is what viser's orbit controls expect.
viser's cameras use OpenCV axes (x right, y down, z forward), as nerflib does.

On a cluster node: start it there (in the SLURM job, or with the train rule's `viewer:` option)
and forward the port from your machine. It binds to 127.0.0.1 by default, so only a tunnel to
the node itself reaches it: `ssh -N -L 8080:localhost:8080 -J LOGIN_HOST NODE`, then open
http://localhost:8080. With `--host 0.0.0.0` (anyone on the cluster's network can connect)
a tunnel through the login node is enough: `ssh -N -L 8080:NODE:8080 LOGIN_HOST`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nerflib import camera_path
from nerflib.types import Camera

OUTPUTS = ("colour", "depth", "accumulation")


@dataclasses.dataclass
class ViewerOptions:
    """Settings of `nerf view` (and of the train rule's `viewer:` option)."""

    host: str = "127.0.0.1"
    """Address to bind: 127.0.0.1 (this machine, or through an SSH tunnel) or 0.0.0.0 (every interface)."""
    port: int = 8080
    """TCP port of the web page."""
    max_size: int = 512
    """Longer side, in pixels, of the frame rendered once the camera is still."""
    preview_size: int = 128
    """Longer side of the frames rendered while the camera moves."""
    settle_s: float = 0.25
    """Seconds without camera motion before the full-size frame."""
    reload_s: float = 10.0
    """Seconds between looks for a newer checkpoint (0 = never)."""
    path_out: str = "camera_path.json"
    """Where the Save path button writes the keyframes (our camera path format)."""
    keyframe_seconds: float = 2.0
    """Initial seconds between consecutive keyframes of the path."""
    fps: float = 30.0
    """Frames per second written into the path file."""
    wait_s: float = 0.0
    """Wait this long for the model's first checkpoint (the train rule's viewer starts with training)."""


def _latest_step(model_dir) -> int | None:
    from nerflib import checkpoint

    folder = checkpoint.checkpoint_dir(model_dir)
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(steps) if steps else None


def _rot_to_wxyz(r: np.ndarray) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3.from_matrix(np.asarray(r, np.float64)).wxyz


def _wxyz_to_rot(wxyz) -> np.ndarray:
    import viser.transforms as vtf

    return vtf.SO3(np.asarray(wxyz, np.float64)).as_matrix()


class Viewer:
    """The viser server, the model and a render thread. `start()` serves; `stop()` ends it."""

    def __init__(self, model_dir, scene_json, *, images=None, sparse_dir=None,
                 options: ViewerOptions = ViewerOptions(), log: Callable[[str], None] = print):
        from nerflib import parallel, video

        self.model_dir = Path(model_dir)
        self.options = options
        self.log = log
        self.mesh = parallel.make_mesh()
        if options.wait_s > 0 and _latest_step(model_dir) is None:
            log(f"viewer: waiting up to {options.wait_s:.0f} s for the first checkpoint in {self.model_dir}")
            deadline = time.monotonic() + options.wait_s
            while _latest_step(model_dir) is None and time.monotonic() < deadline:
                time.sleep(1.0)
            time.sleep(2.0)  # let the checkpoint's writer finish
        self._load_model()
        self.frame = video.training_frame(self.cfg, scene_json, images=images)
        self.points = None
        if sparse_dir and Path(sparse_dir).is_dir():
            from nerflib import scene_io

            pts = scene_io.read_colmap(sparse_dir, check_images=False).points
            if pts is not None and len(pts) and self.frame.normalization is not None:
                t = np.asarray(self.frame.normalization["T"])
                pts = pts @ t[:3, :3].T + t[:3, 3]
            self.points = pts
        self.keyframes: list[dict] = []
        self.frames_sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[int, dict] = {}
        self.server = None
        self.port = options.port

    # ------------------------------------------------------------------ model

    def _load_model(self) -> None:
        from nerflib import checkpoint, evaluate

        cfg, params, step = checkpoint.restore_params(self.model_dir, self.mesh)
        self.cfg, self.params, self.step = cfg, params, int(step)
        self.model, self.render_fn = evaluate.field_of(cfg, params, self.mesh)
        self.log(f"viewer: model step {self.step} from {self.model_dir}")

    def reload_if_newer(self) -> bool:
        """Load the newest checkpoint if its step is newer than the shown one; True if it did."""
        latest = _latest_step(self.model_dir)
        if latest is None or latest <= self.step:
            return False
        try:
            with self._lock:
                self._load_model()
        except Exception as e:  # noqa: BLE001 - a checkpoint still being written: try again later
            self.log(f"viewer: checkpoint {latest} not loaded yet ({type(e).__name__}: {str(e)[:120]})")
            return False
        for state in self._clients.values():
            state["dirty"] = True
        if self.server is not None:
            self._step_text.value = str(self.step)
        return True

    # ------------------------------------------------------------------ rendering

    def render(self, c2w: np.ndarray, fov_y: float, aspect: float, size: int, output: str = "colour") -> np.ndarray:
        """uint8 [H, W, 3] of the field from c2w [3, 4] (training frame, OpenCV axes), vertical fov in radians."""
        from nerflib import cameras as cam_lib
        from nerflib import evaluate, video

        if aspect >= 1:
            width, height = size, max(1, round(size / aspect))
        else:
            width, height = max(1, round(size * aspect)), size
        fy = 0.5 * height / np.tan(0.5 * fov_y)
        camera = Camera("PINHOLE", int(width), int(height), (fy, fy, width / 2, height / 2))
        rays = cam_lib.generate_rays(camera, c2w, near=self.frame.near, far=self.frame.far)
        with self._lock:
            out = evaluate.render_image(self.model, self.params, rays, chunk_size=self.cfg.render_chunk_size,
                                        mesh=self.mesh, render_fn=self.render_fn)
        if output == "depth":
            acc = out["acc"]
            ok = acc > 0.5
            d = out["depth"][ok] if ok.any() else out["depth"].reshape(-1)
            lo, hi = (np.percentile(d, [1, 99]) if d.size else (self.frame.near, self.frame.far))
            return video.depth_colors(out["depth"], acc, float(lo), float(max(hi, lo * 1.0001)))
        if output == "accumulation":
            return np.repeat(video.to_uint8(out["acc"])[..., None], 3, axis=-1)
        return video.to_uint8(np.clip(out["rgb"], 0.0, 1.0))

    def _client_pose(self, client) -> tuple[np.ndarray, float, float]:
        cam = client.camera
        c2w = np.concatenate([_wxyz_to_rot(cam.wxyz), np.asarray(cam.position, np.float64)[:, None]], axis=1)
        return c2w, float(cam.fov), float(cam.aspect)

    def _loop(self) -> None:
        """Render thread: a preview while a camera moves, the full size once it is still, new checkpoints."""
        last_reload = time.monotonic()
        while not self._stop.is_set():
            if self.options.reload_s > 0 and time.monotonic() - last_reload > self.options.reload_s:
                last_reload = time.monotonic()
                self.reload_if_newer()
            busy = False
            for cid, state in list(self._clients.items()):
                client = state["client"]
                still = time.monotonic() - state["moved"] > self.options.settle_s
                if state["dirty"]:
                    size = self.options.preview_size if not still else self.options.max_size
                elif still and state["shown_size"] < self.options.max_size:
                    size = self.options.max_size
                else:
                    continue
                try:
                    c2w, fov, aspect = self._client_pose(client)
                    state["dirty"] = False
                    image = self.render(c2w, fov, aspect, size, self._output.value)
                    client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
                except Exception as e:  # noqa: BLE001 - a client that left mid-frame; keep serving the rest
                    self.log(f"viewer: frame for client {cid} failed ({type(e).__name__}: {e})")
                    continue
                state["shown_size"] = size
                self.frames_sent += 1
                busy = True
            if not busy:
                time.sleep(0.02)

    # ------------------------------------------------------------------ scene and controls

    def _add_scene(self) -> None:
        server = self.server
        centres = self.frame.c2w[:, :, 3]
        radius = float(np.median(np.linalg.norm(centres - centres.mean(0), axis=-1))) or 1.0  # the capture's size
        self._frustums, self._points = [], None
        for n, i in enumerate(self.frame.train):
            cam = self.frame.cameras[i]
            fy = cam.param("fy")
            c2w = self.frame.c2w[i]
            self._frustums.append(server.scene.add_camera_frustum(
                f"/cameras/{n:04d}", fov=2 * np.arctan(0.5 * cam.height / fy), aspect=cam.width / cam.height,
                scale=0.03 * radius, thickness=1.5, thickness_units="screen", wxyz=_rot_to_wxyz(c2w[:, :3]),
                position=c2w[:, 3], color=(40, 90, 200)))
        if self.points is not None and len(self.points):
            pts = np.asarray(self.points, np.float32)
            self._points = server.scene.add_point_cloud("/sparse_points", pts, colors=(240, 150, 40),
                                                        point_size=0.004 * radius)

    def _add_gui(self) -> None:
        gui = self.server.gui
        self._output = gui.add_dropdown("Output", OUTPUTS, initial_value="colour")
        self._step_text = gui.add_text("Model step", initial_value=str(self.step), disabled=True)
        show_cameras = gui.add_checkbox("Training cameras", initial_value=True)
        show_points = gui.add_checkbox("Sparse points", initial_value=True, visible=self._points is not None)
        self._spacing = gui.add_number("Seconds between keyframes", initial_value=self.options.keyframe_seconds,
                                       min=0.05, step=0.05)
        self._count = gui.add_text("Keyframes", initial_value="0", disabled=True)
        add = gui.add_button("Add keyframe")
        clear = gui.add_button("Clear keyframes")
        save = gui.add_button("Save path")
        self._saved = gui.add_text("Saved to", initial_value="", disabled=True)

        @self._output.on_update
        def _(_event) -> None:
            self._redraw()

        @show_cameras.on_update
        def _(_event) -> None:
            for f in self._frustums:
                f.visible = show_cameras.value
            self._redraw()

        @show_points.on_update
        def _(_event) -> None:
            if self._points is not None:
                self._points.visible = show_points.value
            self._redraw()

        @add.on_click
        def _(event) -> None:
            if event.client is not None:
                self.add_keyframe(event.client)

        @clear.on_click
        def _(_event) -> None:
            self.keyframes.clear()
            self._count.value = "0"

        @save.on_click
        def _(_event) -> None:
            try:
                self._saved.value = str(self.save_path())
            except ValueError as e:
                self._saved.value = f"not saved: {e}"

    def _redraw(self) -> None:
        """Send every client a new frame (a change of the scene's contents can drop the browser's background)."""
        for state in self._clients.values():
            state["dirty"] = True

    def add_keyframe(self, client) -> None:
        """The client's camera as the next keyframe (training frame; converted when saved)."""
        c2w, fov, aspect = self._client_pose(client)
        t = 0.0 if not self.keyframes else self.keyframes[-1]["time"] + float(self._spacing.value)
        self.keyframes.append({"c2w": c2w, "fov": float(np.degrees(fov)), "aspect": aspect, "time": t})
        self._count.value = str(len(self.keyframes))
        self.log(f"viewer: keyframe {len(self.keyframes)} at {t:.2f} s")

    def save_path(self, path=None) -> Path:
        """Write the keyframes as our camera path file, poses in scene.json's frame; returns its path."""
        from nerflib import scene_io

        if len(self.keyframes) < 2:
            raise ValueError("a path needs at least 2 keyframes")
        path = Path(path or self.options.path_out)
        c2w = np.stack([k["c2w"] for k in self.keyframes])
        if self.frame.normalization is not None:
            c2w = scene_io.transform_poses(c2w, self.frame.normalization["T_inv"])
        ref = self.frame.cameras[self.frame.train[0]]
        height = int(ref.height) // max(1, int(self.cfg.factor))
        aspect = self.keyframes[0]["aspect"]
        camera_path.write_path(path, c2w, [k["time"] for k in self.keyframes], fps=self.options.fps,
                               fov=[k["fov"] for k in self.keyframes], width=max(1, round(height * aspect)),
                               height=height)
        self.log(f"viewer: {len(self.keyframes)} keyframes saved to {path}")
        return path

    # ------------------------------------------------------------------ server

    def start(self) -> None:
        import viser

        self.server = viser.ViserServer(host=self.options.host, port=self.options.port, verbose=False)
        self.server.scene.set_up_direction("+z")
        self._add_scene()
        self._add_gui()

        @self.server.on_client_connect
        def _(client) -> None:
            # Start behind the first training camera (its frustum in view), looking as it looked.
            c2w = self.frame.c2w[self.frame.train[0]]
            back = 0.25 * float(np.linalg.norm(c2w[:, 3] - self.frame.c2w[:, :, 3].mean(0)) or 1.0)
            client.camera.wxyz = _rot_to_wxyz(c2w[:, :3])
            client.camera.position = c2w[:, 3] - back * c2w[:, 2]
            state = {"client": client, "dirty": True, "moved": time.monotonic(), "shown_size": 0}
            self._clients[client.client_id] = state

            @client.camera.on_update
            def _(_camera) -> None:
                state["dirty"] = True
                state["moved"] = time.monotonic()

        @self.server.on_client_disconnect
        def _(client) -> None:
            self._clients.pop(client.client_id, None)

        self._thread = threading.Thread(target=self._loop, name="viewer-render", daemon=True)
        self._thread.start()
        self.port = self.server.get_port()  # viser takes the next free port when this one is in use
        self.log(f"viewer: http://{self.options.host}:{self.port} (model step {self.step})")

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM (the train rule's wrapper stops its viewer so)."""
        import signal

        signal.signal(signal.SIGTERM, lambda signum, frame: self._stop.set())
        self.start()
        try:
            while not self._stop.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

