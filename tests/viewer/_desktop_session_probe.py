"""Run by test_desktop_session.py with DISPLAY set: a person at the desktop window, played by calls into the
GLFW callbacks, drags and zooms during the first stimulus and tries to zoom a panel; the next stimulus must
start at its start yaw and the protocol's field of view again. Prints "ok" and the stored pose summary."""

import json
import sys

import glfw

from study.engine import SessionEngine
from study.export import load_poses
from study.store import open_study
from viewer.backends.desktop import DesktopBackend
from viewer.session_runner import PANEL_VIEW_FOV_DEG, SessionRunner


def main(db_path: str) -> None:
    reason = DesktopBackend.why_not()
    if reason is not None:
        print(f"skip: {reason}")
        return
    db = open_study(db_path)
    engine = SessionEngine.start(db, "P01")
    backend = DesktopBackend(320, 180, fov_deg=db.protocol.view.fov_deg)
    seen = {"panel_fov": set(), "dragged": False, "zoomed_panel": False}
    real_poll = backend.poll_input

    def person():
        """What the person does this frame, by the step on screen."""
        step = runner._step
        window = backend.window
        if runner.mode == "complete":
            backend._on_key(window, glfw.KEY_ENTER, 0, glfw.PRESS, 0)   # Finish on the thank-you panel
            return
        if step is None or runner.frames == 0:     # the first frame is grey, before any panel
            return
        if step.kind == "stimulus" and step.trial_index == 0 and runner._stimulus_shown_s is not None and not seen["dragged"]:
            backend._on_cursor(window, 100, 90)
            backend._on_button(window, glfw.MOUSE_BUTTON_LEFT, glfw.PRESS, 0)
            for x in range(100, 261, 20):        # 160 px to the right: the view turns 24° to the left
                backend._on_cursor(window, x, 90)
            backend._on_button(window, glfw.MOUSE_BUTTON_LEFT, glfw.RELEASE, 0)
            backend._on_scroll(window, 0, -2)     # zoom out by 10°
            seen["dragged"] = True
        elif step.kind == "stimulus":
            return
        elif runner._stimulus_shown_s is None and step.kind != "stimulus":
            seen["panel_fov"].add(backend.fov_deg)
            if not seen["zoomed_panel"]:
                backend._on_scroll(window, 0, 3)  # a panel's view is fixed: nothing happens
                seen["zoomed_panel"] = True
            key = {"rating": glfw.KEY_3, "ssq": glfw.KEY_1}.get(step.kind)
            if key is not None:
                backend._on_key(window, key, 0, glfw.PRESS, 0)
            backend._on_key(window, glfw.KEY_ENTER, 0, glfw.PRESS, 0)

    def poll():
        person()
        return real_poll()

    backend.poll_input = poll
    with backend:
        runner = SessionRunner(engine, backend, driver=None, frame_hz=30.0, preload=2)
        summary = runner.run()
    poses = load_poses(db)
    first = poses.sort_values("t").groupby("trial_index").first()
    out = {
        "completed": summary.completed,
        "panel_fov": sorted(seen["panel_fov"]),
        "trial0_yaw_range": [float(poses[poses.trial_index == 0].yaw_deg.min()),
                             float(poses[poses.trial_index == 0].yaw_deg.max())],
        "trial0_fov": sorted(set(poses[poses.trial_index == 0].fov_h_deg.round(3))),
        "first_yaw": {int(k): round(float(v), 3) for k, v in first.yaw_deg.items()},
        "first_fov": {int(k): round(float(v), 3) for k, v in first.fov_h_deg.items()},
        "panel_view": PANEL_VIEW_FOV_DEG,
    }
    db.close()
    print(json.dumps(out))
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
