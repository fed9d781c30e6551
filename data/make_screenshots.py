"""Takes the README's screenshots of a desktop session and its experimenter's console, under Xvfb.

A throw-away study of ``protocols/dong2025.toml`` (the training panoramas stand in for the four scenes'
stimuli) runs with ``panostudy session run --backend desktop``; xdotool answers in the participant's
window and presses the console's keys, and ImageMagick's ``import`` captures each window. The images go
to ``data/screenshots/`` as small palette PNGs; a panel of a Chinese protocol is drawn directly.

Needs Xvfb, xdotool and imagemagick (Debian: ``apt-get install xvfb xdotool imagemagick``).
Run: ``.venv/bin/python data/make_screenshots.py``
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "screenshots"
WIDTH = 760


def _run(*args, env, check=True, **options):
    return subprocess.run([str(a) for a in args], env=env, check=check, capture_output=True, text=True, **options)


def _window(env, name: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _run("xdotool", "search", "--name", name, env=env, check=False).stdout.split()
        if found:
            return found[0]
        time.sleep(0.2)
    raise RuntimeError(f"no window named {name!r} appeared")


def _keys(env, window: str, *keys: str, pause: float = 0.25) -> None:
    _run("xdotool", "windowfocus", "--sync", window, env=env)
    for key in keys:
        _run("xdotool", "key", key, env=env)
        time.sleep(pause)


def _shot(env, window: str, name: str, width: int = WIDTH) -> None:
    raw = OUT / f"{name}.raw.png"
    _run("import", "-window", window, raw, env=env)
    image = Image.open(raw).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(OUT / f"{name}.png", optimize=True)
    raw.unlink()
    print(f"wrote {OUT / name}.png")


def _until(predicate, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError("the session did not get there in time")


def _cjk_panel() -> None:
    """A rating panel of a protocol written in Chinese, drawn as the headset shows it."""
    from study.engine import Step
    from study.protocol import DEFAULT_PROTOCOL, parse_protocol
    from viewer.backends.base import InputEvent
    from viewer.panel import Panel, content_for_step

    text = DEFAULT_PROTOCOL.read_text(encoding="utf-8").replace("[training]", (
        '[panel]\nquestion_progress = true\n[captions]\nconfirm = "确认"\n'
        'question_progress = "第 {number} 题，共 {count} 题"\n\n[training]'), 1)
    protocol = parse_protocol(text, "zh.toml", base_dir=DEFAULT_PROTOCOL.parent)
    step = Step("rating", "trial/3/ACR/overall", text="您如何评价这张全景图像的整体质量？请环顾整个场景后再作答。",
                labels={1: "很差", 2: "差", 3: "一般", 4: "好", 5: "非常好"}, min_value=1, max_value=5,
                trial_index=3, item_number=1, item_count=9)
    panel = Panel(content_for_step(step, protocol), shown_at_s=0.0)
    panel.handle(InputEvent("key", "4"), 0.0)
    image = Image.fromarray(panel.draw(0.0)).convert("RGB").resize((WIDTH, round(700 * WIDTH / 1200)),
                                                                   Image.Resampling.LANCZOS)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(OUT / "panel_chinese.png", optimize=True)
    print(f"wrote {OUT / 'panel_chinese.png'}")


def main() -> None:
    for tool in ("Xvfb", "xdotool", "import"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed; apt-get install xvfb xdotool imagemagick")
    OUT.mkdir(parents=True, exist_ok=True)
    number = next(n for n in range(150, 250) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "2560x1080x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DISPLAY": f":{number}", "PYTHONPATH": str(ROOT)}
    session = None
    try:
        time.sleep(1.0)
        _cjk_panel()
        folder = Path(tempfile.mkdtemp(prefix="panostudy-shots-"))
        db = folder / "study.sqlite"
        for i, scene in enumerate(("vehicle", "street", "indoor", "mountainous")):
            (folder / "stimuli" / scene).mkdir(parents=True)
            source = Image.open(ROOT / "data" / "training" / ("training_front.png" if i % 2 else "training_grid.png"))
            # each turned its own way, as an image may be under one scene only (the training scene included);
            # the few extra pixels keep the grid, which repeats along the width, from coming back to itself
            turned = np.roll(np.asarray(source.convert("RGB")), (2 * i + 1) * source.width // 8 + 5 * i, axis=1)
            Image.fromarray(turned).save(folder / "stimuli" / scene / f"{scene}_0.png")
        cli = [sys.executable, "-m", "panostudy"]
        _run(*cli, "study", "init", "--db", db, env=env)
        _run(*cli, "study", "import-stimuli", "--db", db, folder / "stimuli", env=env)
        _run(*cli, "study", "add-participant", "--db", db, "--code", "P07", env=env)
        session = subprocess.Popen([*cli, "session", "run", "--db", str(db), "--participant", "P07", "--backend",
                                    "desktop", "--station", "lab-pc-2"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        def step():
            """The session's current step, read from the database as another process would."""
            from study.engine import SessionEngine
            from study.store import open_study

            with open_study(db) as study:
                return SessionEngine.load(study, "P07").current()

        participant = _window(env, "panostudy – dong2025")
        console = _window(env, "experimenter console")
        # beside the participant's 1280-pixel window, not over it: a window on top would be in its capture
        _run("xdotool", "windowmove", console, 1280, 0, env=env)
        time.sleep(2.0)
        _shot(env, participant, "panel_consent")
        _keys(env, participant, "Right", "Return")
        _until(lambda: step().key == "instructions")
        time.sleep(1.0)
        _shot(env, participant, "panel_instructions")
        _keys(env, participant, "Return")
        for _ in range(16):                           # the SSQ before the trials
            _keys(env, participant, "0", "Return", pause=0.2)
        _until(lambda: step().key == "training/instructions")
        _keys(env, participant, "Return")
        _until(lambda: step().kind == "rating", timeout=60)
        _keys(env, console, "m")
        _keys(env, participant, "4")
        time.sleep(2.0)
        _shot(env, participant, "panel_rating")
        _shot(env, console, "console", width=640)
        _keys(env, console, "p")
        time.sleep(1.5)
        _shot(env, participant, "panel_paused")
        _keys(env, console, "r")
        time.sleep(1.0)
        _keys(env, participant, "Escape")
        time.sleep(1.0)
        _shot(env, participant, "panel_stop")
        _keys(env, participant, "Right", "Return")   # Go on
        time.sleep(1.0)
        _keys(env, console, "a")
        dialog = _window(env, "Abort the session")
        _run("xdotool", "windowmove", dialog, 1280, 660, env=env)
        _run("xdotool", "windowfocus", "--sync", dialog, env=env)
        _run("xdotool", "type", "--delay", "40", "participant felt dizzy", env=env)
        time.sleep(0.5)
        _shot(env, dialog, "console_abort", width=640)
        _keys(env, dialog, "Return")
        session.wait(30)
    finally:
        if session is not None and session.poll() is None:
            session.terminate()
            session.wait(10)
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
