"""Replay of a trial: the equirect stimulus with the head viewport and the gaze moving over it, in real time.

Each frame shows the stimulus, the outline of the head's viewport (the frustum's edges projected onto the
equirect, broken where they cross ±180°), the viewport centre, the gaze point with its last second as a
trail, and below it the participant, the time and the ratings given after the stimulus. A frame at time t
shows the latest sample at or before t, as the headset showed it. Output is an ``.mp4`` (H.264 through
imageio's ffmpeg plugin), a ``.gif`` (Pillow), or with ``every_s`` a contact sheet (``.png``/``.jpg``) of
one frame every ``every_s`` seconds.

The data are plain frames: head poses as ``study.export.load_poses`` returns them, ratings as
``study.export.load_answers``, and gaze samples with :data:`GAZE_SAMPLE_COLUMNS` (``study.export.load_gaze``
by default, or a file of the same columns; ``session`` is the database id, as in every export).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from study.errors import AnalysisError
from study.sphere import head_rotation, yaw_pitch

GAZE_SAMPLE_COLUMNS = ("participant", "session", "trial_index", "t", "yaw_deg", "pitch_deg", "valid")
VIDEO_SUFFIXES = (".mp4", ".gif")
SHEET_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FPS = {".mp4": 30.0, ".gif": 10.0}
#: Field of view of the outline, (horizontal, vertical) degrees: about a VIVE Pro Eye's per-eye view.
DEFAULT_FOV_DEG = (100.0, 100.0)
PANEL_HEIGHT = 64
SHEET_COLUMNS = 3

_HEAD = (255, 214, 10)
_GAZE = (255, 59, 48)
_TRAIL = (255, 120, 110)
_HALO = (20, 20, 20)
_PANEL = (28, 28, 30)
_TEXT = (235, 235, 235)
_MUTED = (150, 150, 155)


@dataclass(frozen=True)
class ReplayTrial:
    """Everything a replay shows of one trial."""

    participant: str
    session: int            # the participant's session number (from 1)
    trial_index: int
    stimulus: str
    scene: str
    training: bool
    duration_s: float
    poses: pd.DataFrame
    gaze: pd.DataFrame | None
    ratings: tuple[tuple[str, str, int], ...]


def check_gaze_samples(gaze: pd.DataFrame, source: str = "gaze samples") -> pd.DataFrame:
    """``gaze`` with its columns checked and typed (:data:`GAZE_SAMPLE_COLUMNS`; extra columns are kept)."""
    missing = [column for column in GAZE_SAMPLE_COLUMNS if column not in gaze.columns]
    if missing:
        raise AnalysisError(f"{source}: lacks the columns {missing}; gaze samples need {list(GAZE_SAMPLE_COLUMNS)}")
    typed = gaze.copy()
    try:
        typed["participant"] = typed["participant"].astype(str)
        typed[["session", "trial_index"]] = typed[["session", "trial_index"]].astype("int64")
        typed[["t", "yaw_deg", "pitch_deg"]] = typed[["t", "yaw_deg", "pitch_deg"]].astype("float64")
        typed["valid"] = typed["valid"].astype(bool)
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"{source}: a column has values of the wrong type ({str(exc).splitlines()[0]})") from None
    return typed


def replay_trial(
    answers: pd.DataFrame,
    poses: pd.DataFrame,
    participant: str,
    trial_index: int,
    *,
    gaze: pd.DataFrame | None = None,
    session: int | None = None,
    exposure_s: float | None = None,
) -> ReplayTrial:
    """Gathers one trial from the study's frames (answers and poses of ``study.export``; gaze optional).

    ``session`` is the participant's session number (1 for their first), needed only when the trial index is
    in several of their sessions.

    Raises
    ------
    AnalysisError
        One line if the participant is not in the data, has no such session or trial (or it is in several
        sessions and ``session`` is not given), or nothing was recorded during it.
    """
    keys = ["participant", "session", "session_number", "trial_index"]
    recorded = pd.concat(
        [frame[keys] for frame in (answers, poses) if len(frame)], ignore_index=True
    ) if len(answers) or len(poses) else pd.DataFrame(columns=keys)
    recorded["participant"] = recorded["participant"].astype(str)
    codes = sorted(recorded["participant"].unique())
    if participant not in codes:
        listed = ", ".join(codes[:10]) + (" ..." if len(codes) > 10 else "")
        raise AnalysisError(
            f"participant {participant} has nothing recorded in this study; participants with recorded trials: {listed or 'none yet'}"
        )
    mine = recorded[recorded["participant"] == participant]
    if session is not None:
        numbers = sorted(set(mine["session_number"].astype(int)))
        mine = mine[mine["session_number"] == session]
        if mine.empty:
            raise AnalysisError(f"participant {participant} has no session {session} with recorded trials (their "
                                f"sessions: {', '.join(map(str, numbers))}); check --session")
    trials = sorted(set(mine["trial_index"].astype(int)))
    if trial_index not in trials:
        raise AnalysisError(
            f"participant {participant} has no recorded trial {trial_index}; their recorded trials are "
            f"{_ranges(trials)} (counted from 0, training first)"
        )
    of_trial_rows = mine[mine["trial_index"] == trial_index]
    numbers = sorted(set(of_trial_rows["session_number"].astype(int)))
    if len(numbers) > 1:
        raise AnalysisError(
            f"participant {participant} has a trial {trial_index} in sessions {', '.join(map(str, numbers))}; choose one "
            "with --session"
        )
    number = numbers[0]
    session = int(of_trial_rows["session"].iloc[0])

    def of_trial(frame: pd.DataFrame) -> pd.DataFrame:
        selected = frame[(frame["participant"].astype(str) == participant) & (frame["session"] == session)
                         & (frame["trial_index"] == trial_index)]
        return selected.sort_values("t") if "t" in selected.columns else selected

    trial_answers, trial_poses = of_trial(answers), of_trial(poses)
    trial_gaze = None if gaze is None else of_trial(check_gaze_samples(gaze))
    if trial_poses.empty and (trial_gaze is None or trial_gaze.empty):
        raise AnalysisError(f"participant {participant}, trial {trial_index}: no head pose or gaze sample was recorded; nothing to replay")
    source = trial_answers if len(trial_answers) else trial_poses
    ends = [frame["t"].max() for frame in (trial_poses, trial_gaze) if frame is not None and len(frame)]
    return ReplayTrial(
        participant=participant,
        session=number,
        trial_index=int(trial_index),
        stimulus=str(source["stimulus"].iloc[0]),
        scene=str(source["scene"].iloc[0]),
        training=bool(trial_answers["training"].iloc[0]) if "training" in trial_answers and len(trial_answers) else False,
        duration_s=float(exposure_s if exposure_s is not None else max(ends)),
        poses=trial_poses[["t", "yaw_deg", "pitch_deg", "roll_deg"]].reset_index(drop=True),
        gaze=None if trial_gaze is None else trial_gaze[["t", "yaw_deg", "pitch_deg", "valid"]].reset_index(drop=True),
        ratings=tuple((str(r.scale), str(r.item), int(r.value)) for r in trial_answers.itertuples()),
    )


def load_replay_trial(db, participant: str, trial_index: int, *, gaze: pd.DataFrame | None = None,
                      session: int | None = None) -> ReplayTrial:
    """:func:`replay_trial` over a study database (a path, URL or open ``StudyDB``), with its stored gaze unless
    ``gaze`` is given, and the protocol's exposure."""
    from study.export import _opened, load_answers, load_gaze, load_poses

    with _opened(db) as study:
        if gaze is None:
            stored = load_gaze(study)
            gaze = stored if len(stored) else None
        return replay_trial(load_answers(study), load_poses(study), participant, trial_index, gaze=gaze,
                            session=session, exposure_s=study.protocol.exposure_s)


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0–2, 5"``."""
    if not values:
        return "none"
    parts, start = [], values[0]
    for previous, current in zip(values, [*values[1:], None]):
        if current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}–{previous}")
            start = current
    return ", ".join(parts)


def check_replay_options(
    out: str | Path,
    *,
    every_s: float | None = None,
    width: int = 1024,
    fps: float | None = None,
    fov_deg: tuple[float, float] = DEFAULT_FOV_DEG,
) -> tuple[str, float]:
    """``(kind, fps)`` of a replay — kind ``"mp4"``, ``"gif"`` or ``"sheet"`` — after checking every option.

    Raises
    ------
    AnalysisError
        One line naming the file or option that is wrong and what to give instead.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if every_s is not None:
        if suffix not in SHEET_SUFFIXES:
            raise AnalysisError(f"{out}: --every writes a contact sheet; name the file .png or .jpg")
        if not 0 < every_s < math.inf:
            raise AnalysisError(f"--every {every_s}: give a positive number of seconds between frames, e.g. 2")
    elif suffix not in VIDEO_SUFFIXES:
        hint = " (a contact sheet needs --every SECONDS)" if suffix in SHEET_SUFFIXES else ""
        raise AnalysisError(f"{out}: unknown replay format '{suffix}'; name the file .mp4 or .gif{hint}")
    if not out.parent.is_dir():
        raise AnalysisError(f"{out}: folder {out.parent} does not exist; create it first")
    if width % 32 or not 256 <= width <= 4096:
        raise AnalysisError(f"--width {width}: give a multiple of 32 from 256 to 4096, e.g. 1024")
    fps = DEFAULT_FPS.get(suffix, 30.0) if fps is None else fps
    if not 0 < fps <= 120:
        raise AnalysisError(f"--fps {fps:g}: give a frame rate above 0 and at most 120")
    if not all(10 < f < 179 for f in fov_deg):
        raise AnalysisError(f"--fov {fov_deg[0]:g}: the viewport's field of view must lie between 10° and 179°")
    return ("sheet" if every_s is not None else suffix[1:]), fps


class _Painter:
    """Draws the frames of one trial at one size."""

    def __init__(self, trial: ReplayTrial, width: int, fov_deg: tuple[float, float], trail_s: float):
        from PIL import Image, ImageFont

        path = Path(trial.stimulus)
        try:
            with Image.open(path) as image:
                image.draft("RGB", (width, width // 2))
                self.background = image.convert("RGB").resize((width, width // 2), Image.Resampling.LANCZOS)
        except OSError as exc:
            raise AnalysisError(f"{path}: cannot read the stimulus of trial {trial.trial_index} ({exc}); replay needs it") from None
        self.trial = trial
        self.width, self.height = width, width // 2
        self.trail_s = trail_s
        self.font = ImageFont.load_default(size=max(11, width // 64))
        self.small = ImageFont.load_default(size=max(10, width // 80))
        self.outline = self._frustum_edges(*fov_deg)
        self.pose_t = trial.poses["t"].to_numpy(dtype=np.float64)
        self.pose = trial.poses[["yaw_deg", "pitch_deg", "roll_deg"]].to_numpy(dtype=np.float64)
        if trial.gaze is not None and len(trial.gaze):
            self.gaze_t = trial.gaze["t"].to_numpy(dtype=np.float64)
            self.gaze = trial.gaze[["yaw_deg", "pitch_deg"]].to_numpy(dtype=np.float64)
            self.gaze_valid = trial.gaze["valid"].to_numpy(dtype=bool) & np.isfinite(self.gaze).all(axis=1)
            self.gaze_period = float(np.median(np.diff(self.gaze_t))) if self.gaze_t.size > 1 else 0.0
        else:
            self.gaze_t = None
        self.ratings = _ratings_text(trial.ratings)

    @staticmethod
    def _frustum_edges(h_fov: float, v_fov: float, per_edge: int = 48) -> np.ndarray:
        """Points ``(4·per_edge + 1, 3)`` around the viewport's border in head coordinates (looking down +z)."""
        tx, ty = math.tan(math.radians(h_fov) / 2), math.tan(math.radians(v_fov) / 2)
        s = np.linspace(-1.0, 1.0, per_edge, endpoint=False)
        edges = [np.column_stack([s * tx, np.full_like(s, ty)]), np.column_stack([np.full_like(s, tx), -s * ty]),
                 np.column_stack([-s * tx, np.full_like(s, -ty)]), np.column_stack([np.full_like(s, -tx), s * ty])]
        border = np.vstack([*edges, edges[0][:1]])
        return np.column_stack([border, np.ones(len(border))])

    def _pixels(self, yaw, pitch) -> np.ndarray:
        u = (np.asarray(yaw) / 360.0 + 0.5) * self.width
        v = (0.5 - np.asarray(pitch) / 180.0) * self.height
        return np.column_stack([u, v])

    def _polylines(self, draw, points: np.ndarray, colour, width: int) -> None:
        """Draws a polyline of pixel points with a dark halo (legible on any stimulus), broken at the ±180° seam."""
        if len(points) < 2:
            return
        cuts = np.flatnonzero(np.abs(np.diff(points[:, 0])) > self.width / 2) + 1
        pieces = [[tuple(p) for p in piece.tolist()] for piece in np.split(points, cuts) if len(piece) >= 2]
        for fill, extra in ((_HALO, 2), (colour, 0)):
            for piece in pieces:
                draw.line(piece, fill=fill, width=width + extra, joint="curve")

    def frame(self, t: float):
        from PIL import Image, ImageDraw

        canvas = Image.new("RGB", (self.width, self.height + PANEL_HEIGHT), _PANEL)
        canvas.paste(self.background, (0, 0))
        draw = ImageDraw.Draw(canvas)
        line = max(2, self.width // 400)
        if self.pose_t.size:
            yaw, pitch, roll = self.pose[max(0, int(np.searchsorted(self.pose_t, t, side="right")) - 1)]
            border = self.outline @ head_rotation(yaw, pitch, roll).T
            self._polylines(draw, self._pixels(*yaw_pitch(border)), _HEAD, line)
            cx, cy = self._pixels(yaw, pitch)[0]
            arm = 3 * line
            for fill, extra in ((_HALO, 2), (_HEAD, 0)):
                draw.line([(cx - arm, cy), (cx + arm, cy)], fill=fill, width=line + extra)
                draw.line([(cx, cy - arm), (cx, cy + arm)], fill=fill, width=line + extra)
        gaze_state = "not recorded"
        if self.gaze_t is not None:
            now = int(np.searchsorted(self.gaze_t, t, side="right")) - 1
            recent = (self.gaze_t > t - self.trail_s) & (self.gaze_t <= t)
            # the trail breaks at every lost sample
            for run in np.split(np.flatnonzero(recent), np.flatnonzero(~self.gaze_valid[recent]) + 1):
                run = run[self.gaze_valid[run]]
                if run.size >= 2:
                    self._polylines(draw, self._pixels(self.gaze[run, 0], self.gaze[run, 1]), _TRAIL, max(1, line - 1))
            fresh = now >= 0 and t - self.gaze_t[now] <= 2 * self.gaze_period + 1e-9
            if fresh and self.gaze_valid[now]:
                gx, gy = self._pixels(*self.gaze[now])[0]
                radius = 3 * line
                draw.ellipse([gx - radius, gy - radius, gx + radius, gy + radius], fill=_GAZE, outline=_HALO, width=2)
                gaze_state = "tracked"
            else:
                gaze_state = "lost" if now >= 0 else "not yet"
        self._panel(draw, t, gaze_state)
        return canvas

    def _panel(self, draw, t: float, gaze_state: str) -> None:
        trial = self.trial
        top = self.height
        kind = ", training" if trial.training else ""
        title = (f"{trial.participant} · session {trial.session} · trial {trial.trial_index} ({trial.scene}{kind}) · "
                 f"{Path(trial.stimulus).name}")
        clock = f"t = {t:5.1f} s / {trial.duration_s:.1f} s"
        draw.text((8, top + 6), title, fill=_TEXT, font=self.font)
        clock_width = draw.textlength(clock, font=self.font)
        draw.text((self.width - 8 - clock_width, top + 6), clock, fill=_TEXT, font=self.font)
        draw.text((8, top + 26), self.ratings, fill=_TEXT, font=self.small)
        legend = f"yellow: head viewport · red: gaze ({gaze_state})"
        draw.text((8, top + 44), legend, fill=_MUTED, font=self.small)
        bar_left = self.width // 2
        share = min(1.0, max(0.0, t / trial.duration_s)) if trial.duration_s > 0 else 1.0
        draw.rectangle([bar_left, top + 50, self.width - 8, top + 54], fill=(70, 70, 75))
        draw.rectangle([bar_left, top + 50, bar_left + share * (self.width - 8 - bar_left), top + 54], fill=_HEAD)


def _ratings_text(ratings: Sequence[tuple[str, str, int]]) -> str:
    """``"rated: ACR: overall 4 · VAR: clarity 3, detail 4"``, scales in the order answered."""
    if not ratings:
        return "rated: no answer recorded for this trial"
    by_scale: dict[str, list[str]] = {}
    for scale, item, value in ratings:
        by_scale.setdefault(scale, []).append(f"{item} {value}")
    return "rated: " + " · ".join(f"{scale}: {', '.join(items)}" for scale, items in by_scale.items())


def render_replay(
    trial: ReplayTrial,
    out: str | Path,
    *,
    width: int = 1024,
    fps: float | None = None,
    every_s: float | None = None,
    fov_deg: tuple[float, float] = DEFAULT_FOV_DEG,
    trail_s: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Writes the replay of ``trial`` to ``out`` (.mp4, .gif, or a .png/.jpg contact sheet with ``every_s``).

    Parameters
    ----------
    trial : ReplayTrial
        From :func:`load_replay_trial` or :func:`replay_trial`.
    out : path
        The file; written to a temporary name beside it and renamed when complete, so a failed or
        interrupted replay leaves no partial file.
    width : int
        Frame width in pixels, a multiple of 32 from 256 to 4096 (the stimulus is shown at width × width/2).
    fps : float, optional
        Frames per second of trial time (30 for .mp4, 10 for .gif); the replay runs in real time.
    every_s : float, optional
        Makes a contact sheet of one frame every ``every_s`` seconds instead of a video.
    fov_deg : (float, float)
        Horizontal and vertical field of view of the viewport outline.
    trail_s : float
        How much of the gaze's past the trail shows.
    progress : callable, optional
        Called as ``progress(frames_done, frames_total)``.
    """
    out = Path(out)
    kind, fps = check_replay_options(out, every_s=every_s, width=width, fps=fps, fov_deg=fov_deg)
    painter = _Painter(trial, width, fov_deg, trail_s)
    step = every_s if kind == "sheet" else 1.0 / fps
    times = np.arange(0.0, trial.duration_s + 1e-9, step)
    temporary = out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")
    try:
        if kind == "mp4":
            _write_mp4(painter, times, fps, temporary, progress)
        elif kind == "gif":
            _write_gif(painter, times, fps, temporary, progress)
        else:
            _write_sheet(painter, times, temporary, progress)
        temporary.replace(out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out


def _write_mp4(painter: _Painter, times: np.ndarray, fps: float, path: Path, progress) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                            quality=7, macro_block_size=16, ffmpeg_log_level="error") as writer:
        for index, t in enumerate(times):
            writer.append_data(np.asarray(painter.frame(float(t))))
            if progress:
                progress(index + 1, len(times))


def _write_gif(painter: _Painter, times: np.ndarray, fps: float, path: Path, progress) -> None:
    frames = []
    for index, t in enumerate(times):
        frames.append(painter.frame(float(t)).quantize(colors=255))
        if progress:
            progress(index + 1, len(times))
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000.0 / fps), loop=0)


def _write_sheet(painter: _Painter, times: np.ndarray, path: Path, progress) -> None:
    from PIL import Image

    cells = []
    for index, t in enumerate(times):
        cells.append(painter.frame(float(t)))
        if progress:
            progress(index + 1, len(times))
    cell_w, cell_h = cells[0].size
    columns = min(SHEET_COLUMNS, len(cells))
    rows = math.ceil(len(cells) / columns)
    gap = 4
    sheet = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), (0, 0, 0))
    for index, cell in enumerate(cells):
        sheet.paste(cell, ((index % columns) * (cell_w + gap), (index // columns) * (cell_h + gap)))
    sheet.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
