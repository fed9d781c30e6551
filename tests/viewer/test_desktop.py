"""The desktop (GLFW) backend in a virtual X display: it draws the e2p view and maps keys to answers."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_desktop_window_draws_the_view_and_turns_keys_into_events(panorama_file):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    number = next(n for n in range(97, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/tmp/.X11-unix/X{number}") and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = Path(__file__).with_name("_desktop_probe.py")
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "DISPLAY": f":{number}", "PYTHONPATH": str(root)}
        done = subprocess.run([sys.executable, str(probe), str(panorama_file[0])], capture_output=True, text=True,
                              env=env, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
    if done.stdout.startswith("skip:"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
