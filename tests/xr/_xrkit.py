"""The OpenXR tests' kit: a Monado service (simulated headset and controllers, null compositor) started
and stopped by pid, and a tiny study with an answer file for the scripted driver.

A module of its own, because ``from conftest import`` finds whichever conftest was imported first.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "study"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "viewer"))

MONADO_MANIFEST = "/usr/share/openxr/1/openxr_monado.json"
#: Seconds the scripted participant takes per rating or SSQ item in the sessions run here.
RESPONSE_S = 0.05


def why_no_monado() -> str | None:
    if shutil.which("monado-service") is None:
        return "no OpenXR runtime here (monado-service is not installed); `make test-xr` runs these against Monado in a Debian 13 root"
    if not os.environ.get("DISPLAY"):
        return "no display for the OpenGL context (DISPLAY is unset); `make test-xr` starts Xvfb"
    return None


class Monado:
    """``monado-service`` with the simulated headset and controllers and the null compositor.

    The socket lives in a short private ``XDG_RUNTIME_DIR``; :attr:`env` is what a client needs.
    """

    def __init__(self, log: Path):
        self.runtime_dir = tempfile.mkdtemp(prefix="xr", dir="/tmp")
        self.log = log
        self.env = dict(os.environ, XDG_RUNTIME_DIR=self.runtime_dir, XR_RUNTIME_JSON=MONADO_MANIFEST)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(self.env, SIMULATED_ENABLE="1", SIMULATED_LEFT="simple", SIMULATED_RIGHT="simple",
                   XRT_COMPOSITOR_NULL="1", XRT_NO_STDIN="1")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["monado-service"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        socket = Path(self.runtime_dir) / "monado_comp_ipc"
        deadline = time.monotonic() + 20.0
        while not socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"monado-service did not start; its log: {self.log}")
            time.sleep(0.05)
        time.sleep(0.2)   # the socket exists a moment before the service accepts clients

    def kill(self) -> None:
        """SIGKILL, as if the service crashed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None
        (Path(self.runtime_dir) / "monado_comp_ipc").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


#: The eye-tracker validation step the gaze test adds to the tiny protocol.
VALIDATION_TOML = """
[validation]
spread_deg = 15.0
threshold_deg = 1.5
"""


def make_xr_study(folder: Path, *, validation: bool = False):
    """The tiny study (1 s exposures, 10 Hz poses, breaks of 0.5 s) and an answer file for every step;
    ``validation`` adds the protocol's eye-tracker validation step.

    The answers are the seeded rater model's; the file is made on a throwaway copy of the same study,
    whose plan is the same because it comes from the protocol's seed and the participant's code.
    """
    from _studykit import protocol_toml, write_panorama, write_stimuli

    from study.driver import RaterModel, ScriptedDriver
    from study.engine import SessionEngine
    from study.store import add_participant, create_study, import_stimuli

    def build(where: Path):
        where.mkdir(parents=True, exist_ok=True)
        write_panorama(where / "train.png", seed=99)
        protocol = where / "tiny.toml"
        text = protocol_toml(exposure_s=1.0).replace("min_duration_s = 30.0", "min_duration_s = 0.5")
        protocol.write_text(text + (VALIDATION_TOML if validation else ""), encoding="utf-8")
        db = create_study(where / "study.sqlite", protocol)
        import_stimuli(db, write_stimuli(where / "stimuli"))
        add_participant(db, "P01")
        return db

    rows = []
    scratch = build(folder / "scratch")
    model = RaterModel(seed=5)
    engine = SessionEngine.start(scratch, "P01")
    step = engine.current()

    def remember(following):
        nonlocal step
        if step.kind in ("rating", "ssq"):
            rows.append({"key": step.key, "value": model.value("P01", step), "response_time_s": RESPONSE_S})
        step = following

    ScriptedDriver(model).run(engine, on_step=remember)
    scratch.close()
    answers = folder / "answers.csv"
    with open(answers, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, ["key", "value", "response_time_s"])
        writer.writeheader()
        writer.writerows(rows)
    db = build(folder / "study")
    return db, answers, {row["key"]: row["value"] for row in rows}
