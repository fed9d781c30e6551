"""The product's main job end to end on an embedded default: masks → panoramas → study → participants → Table 1.

1. Generate one scene set per scene of ``data/scenes/`` (stage 1 + stage 2), with the offline tiny model unless a
   real one is given.
2. Create a fresh study from ``protocols/dong2025.toml`` and import the set through its manifest.
3. Run simulated participants through the real session engine and the headless viewer: a synthetic eye tracker
   whose eye is drawn towards each stimulus's first masked object (the scene's subject), the head following the
   eye (stored as gaze and pose samples, after the protocol's eye-tracker validation), and a seeded rater model
   whose true scene quality is the paper's Table 1.
4. Analyse the study (Table 1 with CIs, screening, mixed models, reliability, SSQ) into an HTML report.

Every stage writes into one output folder; nothing outside it is touched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from study.errors import PanostudyError
from study.protocol import DEFAULT_PROTOCOL

#: The repository's shipped data (scene specs and masks).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: Table 1 of Dong et al.: mean ratings per scale and scene. The simulated participants' true scene quality.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "vehicle": {"ACR": 4.05, "VAR": 3.2, "SSDS": 4.32, "PCR": 4.23},
    "street": {"ACR": 3.82, "VAR": 3.92, "SSDS": 3.89, "PCR": 3.96},
    "indoor": {"ACR": 3.93, "VAR": 3.79, "SSDS": 3.96, "PCR": 4.02},
    "mountainous": {"ACR": 4.02, "VAR": 3.85, "SSDS": 4.202, "PCR": 4.58},
}

#: What the demo leaves in its output folder.
STIMULI_DIR, DB_NAME, REPORT_DIR = "stimuli", "study.sqlite", "report"

#: (what, done, total) — called as each unit of a stage finishes.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo can be told.

    Attributes
    ----------
    out : Path
        Output folder (must be empty or absent).
    participants : int
        Simulated participants (the paper had 32).
    per_scene : int
        Panoramas per scene.
    model : str or None
        Stage-1 model id or folder; None is the offline tiny random-weight model (placeholder images).
    controlnet, panorama_model, diffusion360 : str or None
        Stage 2's models, as ``generate sets --controlnet/--panorama-model/--diffusion360`` takes them; a real
        ``model`` needs ``controlnet`` or ``diffusion360``.
    seed : int
        Seeds the rater model and the head motion.
    size : (int, int) or None
        Final panorama size; None is 4096×2048 with a real model and 1024×512 with the tiny one.
    eye_size : int
        Side of the headless viewer's square eye buffer.
    frame_hz : float
        Frame rate of the headless viewer's simulated clock (head poses are sampled once per frame, up to
        the protocol's rate).
    """

    out: Path
    participants: int = 32
    per_scene: int = 1
    model: str | None = None
    controlnet: str | None = None
    panorama_model: str | None = None
    diffusion360: str | None = None
    seed: int = 2025
    size: tuple[int, int] | None = None
    eye_size: int = 96
    frame_hz: float = 5.0

    @property
    def placeholder(self) -> bool:
        return self.model in (None, "tiny")


@dataclass(frozen=True)
class DemoResult:
    """Where everything went."""

    stimuli: Path
    manifest: Path
    db: Path
    participants: tuple[str, ...]


def check_settings(settings: DemoSettings) -> None:
    """Refuses settings the demo cannot honour, before anything is written.

    Raises
    ------
    PanostudyError
        Naming the option: too few participants or no panorama per scene.
    """
    if settings.participants < 2:
        raise PanostudyError(f"--participants {settings.participants}: at least 2 are needed for confidence intervals")
    if settings.per_scene < 1:
        raise PanostudyError(f"--per-scene {settings.per_scene}: at least 1 panorama per scene is needed")
    if not settings.placeholder and settings.controlnet is None and settings.diffusion360 is None:
        raise PanostudyError(
            f"--model {settings.model}: stage 2 needs its ControlNet too; add --diffusion360 DIR (Diffusion360's "
            "folder), or --controlnet (with --panorama-model for an inpainting base)"
        )


def check_output_folder(out: Path) -> None:
    """Refuses an output folder that already holds something: a study database is never overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PanostudyError(
            f"--out {out}: already exists and is not empty (it may hold an earlier study); "
            "choose another --out or remove it first"
        )


def generate_command(settings: DemoSettings) -> list[str]:
    """The ``panostudy generate sets`` command line of step 1."""
    command = [sys.executable, "-m", "panostudy", "generate", "sets", "--scenes", str(DATA_DIR / "scenes"),
               "--per-scene", str(settings.per_scene), "--out", str(settings.out / STIMULI_DIR)]
    if settings.placeholder:
        # The tiny model's native scale: larger canvases cost minutes and mean nothing more.
        width, height = settings.size or (1024, 512)
        return command + ["--model", "tiny", "--size", f"{width}x{height}", "--panorama-size", "256x128",
                          "--steps", "4", "--stage1-size", "64", "--stage1-steps", "4"]
    width, height = settings.size or (4096, 2048)
    command += ["--model", settings.model, "--size", f"{width}x{height}"]
    for option, value in (("--controlnet", settings.controlnet), ("--panorama-model", settings.panorama_model),
                          ("--diffusion360", settings.diffusion360)):  # fmt: skip
        if value is not None:
            command += [option, str(value)]
    return command


class GenerationFailed(PanostudyError):
    """The generator's child process failed; it has printed its own one-line error."""

    def __init__(self, exit_code: int):
        super().__init__(f"generating the scene sets failed (exit code {exit_code}); see the message above")
        self.exit_code = exit_code


def generate_stimuli(settings: DemoSettings) -> Path:
    """Step 1 in a child process; returns the set's manifest.

    The generator runs in its own process because torch's native threads and Mesa's llvmpipe (the headless
    viewer of step 3) corrupted each other's heap when they shared one ("free(): corrupted unsorted chunks").

    Raises
    ------
    GenerationFailed
        If the generator fails; its own one-line error has been printed above.
    """
    done = subprocess.run(generate_command(settings))
    if done.returncode != 0:
        raise GenerationFailed(done.returncode)
    return settings.out / STIMULI_DIR / "manifest.jsonl"


def participant_codes(count: int) -> tuple[str, ...]:
    """Pseudonymous codes P01, P02, ... (wider when there are 100 or more)."""
    width = max(2, len(str(count)))
    return tuple(f"P{number:0{width}d}" for number in range(1, count + 1))


def run_participants(db, settings: DemoSettings, progress: Progress | None = None) -> tuple[str, ...]:
    """Enrols and runs every simulated participant through the engine and the headless viewer."""
    from study.driver import RaterModel, ScriptedDriver
    from study.engine import SessionEngine
    from panostudy.gaze_targets import synthetic_gaze, target_regions
    from study.store import add_participant
    from viewer.backends.headless import HeadlessBackend
    from viewer.session_runner import run_session

    raters = RaterModel(settings.seed, scene_quality=PAPER_TABLE1)
    codes = participant_codes(settings.participants)
    regions = target_regions(db)
    if progress is not None:
        progress("", 0, len(codes))
    for done, code in enumerate(codes, start=1):
        add_participant(db, code)
        engine = SessionEngine.start(db, code)
        engine.record_event("answers_source", {"source": "simulated", "seed": settings.seed})
        driver = ScriptedDriver(raters, motion_seed=settings.seed)
        backend = HeadlessBackend(settings.eye_size, settings.eye_size,
                                  gaze=synthetic_gaze(settings.seed, code, regions))
        summary = run_session(engine, backend, driver=driver, frame_hz=settings.frame_hz)
        if not summary.completed:
            raise PanostudyError(f"participant {code}: the simulated session stopped before its end")
        if progress is not None:
            progress(code, done, len(codes))
    return codes


def run_demo(settings: DemoSettings, progress: Progress | None = None) -> DemoResult:
    """Runs steps 1–3 of the module docstring; the caller analyses ``result.db`` (step 4)."""
    from study.store import create_study, import_stimuli

    check_settings(settings)
    check_output_folder(settings.out)
    settings.out.mkdir(parents=True, exist_ok=True)
    manifest = generate_stimuli(settings)
    db_path = settings.out / DB_NAME
    with create_study(db_path, DEFAULT_PROTOCOL) as db:
        import_stimuli(db, manifest)
        codes = run_participants(db, settings, progress)
    return DemoResult(settings.out / STIMULI_DIR, manifest, db_path, codes)
