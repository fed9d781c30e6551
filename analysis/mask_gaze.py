"""Gaze on the masked objects: each object's stage-1 mask on the equirect, and how much it was looked at.

The stage-1 image is the front cube face of its panorama, so a mask of it lands on the equirect through the
face-to-equirect projection the generator used (:func:`generator.projection.face_to_equirect`). An object's
solid-angle share of the sphere is the chance level: a viewer who looked everywhere alike would spend that
share of the time on it. Per object, and per trial, this module measures

- **dwell share**: the share of the valid viewing time whose gaze sample lies on the object (each sample
  counts for the time until the next one);
- **fixation share**: the share of the trial's fixations whose centre lies on the object;
- **time to first fixation** (TTFF): the onset of the first fixation on it (trials without one have none);

then averages each participant's trials of a stimulus (or scene) and takes the mean over participants with a
Student-t CI (:func:`analysis.mos.mean_opinion_score`; the participant is the sampling unit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fixations import TRIAL_KEYS
from analysis.mos import mean_opinion_score
from study.errors import AnalysisError
from study.sphere import pixel_of, pixel_solid_angles

#: An equirect pixel is on an object when at least half of it (bilinear footprint) comes from the mask.
COVERAGE_THRESHOLD = 0.5
DWELL_COLUMNS = (
    "level", "scene", "stimulus", "object", "chance_share",
    "dwell_share", "dwell_ci_low", "dwell_ci_high",
    "fixation_share", "fixation_ci_low", "fixation_ci_high",
    "ttff_s", "ttff_ci_low", "ttff_ci_high",
    "fixated_trials", "n_participants",
)


def project_masks(masks: Mapping[str, np.ndarray], height: int = 512, width: int = 1024) -> dict[str, np.ndarray]:
    """Each stage-1 mask ``(h, w)`` as a boolean equirect region ``(height, width)``.

    The masks are centre-cropped to a square as the stage-1 image is, and projected as the front face
    (one ``py360convert.c2e`` call for all of them); a pixel is on the object where its coverage is ≥ 0.5.
    """
    from generator.projection import centre_square, face_to_equirect

    if not masks:
        return {}
    if width != 2 * height:
        raise AnalysisError(f"project_masks: equirect size {width}x{height} must be 2:1")
    labels = list(masks)
    shapes = {np.shape(masks[label]) for label in labels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise AnalysisError(f"project_masks: masks must share one (h, w) shape, got {sorted(shapes)}")
    faces = np.stack([centre_square(np.asarray(masks[label])).astype(np.float32) for label in labels], axis=-1)
    coverage = face_to_equirect(faces, height, width)
    return {label: coverage[..., k] >= COVERAGE_THRESHOLD for k, label in enumerate(labels)}


def solid_angle_share(region: np.ndarray) -> float:
    """The share of the sphere covered by a boolean (or coverage) equirect region ``(H, W)``."""
    region = np.asarray(region, dtype=np.float64)
    return float((region.sum(axis=1) * pixel_solid_angles(*region.shape)).sum() / (4.0 * math.pi))


def stimulus_masks(metadata: Mapping, *, base_dir: str | Path = ".", where: str = "stimulus"):
    """The object masks a stimulus was generated from, at its stage-1 size, from its manifest entry.

    Parameters
    ----------
    metadata : mapping
        The generator manifest's line for the stimulus (the stimulus' ``generator_metadata`` in the
        study database): its ``masks`` (format, path, image, legend, sha256, labels) and ``stage1``
        (height, width).
    base_dir : path
        Where relative mask paths start: the folder the set was generated from.
    where : str
        Names the stimulus in error messages.

    Returns
    -------
    generator.masks.NamedMasks

    Raises
    ------
    AnalysisError
        If the entry names no masks, or the mask file is missing or is not the file the stimulus was made from.
    """
    from generator.manifest import file_sha256
    from generator.scene_spec import Layout

    info = metadata.get("masks") if isinstance(metadata, Mapping) else None
    stage1 = metadata.get("stage1", {}) if isinstance(metadata, Mapping) else {}
    if not isinstance(info, Mapping) or not {"format", "path", "labels"} <= set(info):
        raise AnalysisError(f"{where}: its generator metadata names no masks; only stimuli made by 'panostudy generate sets' have them")
    path = Path(info["path"])
    path = path if path.is_absolute() else Path(base_dir) / path
    if not path.is_file():
        raise AnalysisError(f"{where}: mask file '{path}' does not exist; give the folder the set was generated from as the base folder")
    if info.get("sha256") and file_sha256(path) != info["sha256"]:
        raise AnalysisError(f"{where}: mask file '{path}' has changed since the stimulus was generated (SHA-256 differs); restore it")
    legend = info.get("legend")
    if legend is not None and not Path(legend).is_absolute():
        legend = Path(base_dir) / legend
    layout = Layout(name=str(metadata.get("layout", path.stem)), format=info["format"], path=path,
                    image=info.get("image"), legend=None if legend is None else Path(legend))
    masks = layout.load_masks().subset(list(info["labels"]))
    height, width = int(stage1.get("height", masks.shape[0])), int(stage1.get("width", masks.shape[1]))
    return masks if masks.shape == (height, width) else masks.resized(height, width)


def _inside(region: np.ndarray, yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    rows, cols = pixel_of(yaw, pitch, *region.shape)
    return region[rows, cols]


def _sample_weights(t: np.ndarray) -> np.ndarray:
    """Each sample's share of the viewing time: until the next sample (the last one: the median interval)."""
    if t.size < 2:
        return np.ones(t.size)
    dt = np.diff(t)
    return np.append(dt, np.median(dt))


def trial_dwell(
    gaze: pd.DataFrame, fixations: pd.DataFrame, regions: Mapping[str, Mapping[str, np.ndarray]]
) -> pd.DataFrame:
    """Per trial and object: dwell share, fixation share and time to first fixation (NaN where none).

    ``gaze`` has :data:`analysis.fixations.TRIAL_KEYS`, ``stimulus``, ``scene``, ``t``, ``yaw_deg``,
    ``pitch_deg`` and ``valid``; ``fixations`` is its fixation table (:func:`analysis.fixations.detect_fixations`);
    ``regions`` maps each stimulus to its objects' equirect regions (:func:`project_masks`).
    Trials of stimuli without regions are left out.
    """
    needed = [*TRIAL_KEYS, "stimulus", "scene", "t", "yaw_deg", "pitch_deg", "valid"]
    missing = [column for column in needed if column not in gaze.columns]
    if missing:
        raise AnalysisError(f"gaze samples lack the columns {missing}; they need {needed}")
    by_trial = {key: group for key, group in fixations.groupby(list(TRIAL_KEYS), observed=True)} if len(fixations) else {}
    rows = []
    for key, samples in gaze.groupby(list(TRIAL_KEYS), sort=True, observed=True):
        stimulus = str(samples["stimulus"].iloc[0])
        if stimulus not in regions:
            continue
        samples = samples.sort_values("t")
        weights = _sample_weights(samples["t"].to_numpy(dtype=np.float64))
        valid = samples["valid"].to_numpy(dtype=bool) & np.isfinite(samples["yaw_deg"].to_numpy(dtype=np.float64))
        yaw = samples["yaw_deg"].to_numpy(dtype=np.float64)[valid]
        pitch = samples["pitch_deg"].to_numpy(dtype=np.float64)[valid]
        weights = weights[valid]
        found = by_trial.get(key)
        for name, region in regions[stimulus].items():
            dwell = float(weights[_inside(region, yaw, pitch)].sum() / weights.sum()) if weights.size else np.nan
            share = ttff = np.nan
            if found is not None and len(found):
                on = _inside(region, found["yaw_deg"].to_numpy(), found["pitch_deg"].to_numpy())
                share = float(on.mean())
                ttff = float(found["onset_s"].to_numpy()[on].min()) if on.any() else np.nan
            rows.append({**dict(zip(TRIAL_KEYS, key)), "scene": samples["scene"].iloc[0], "stimulus": stimulus,
                         "object": name, "chance_share": solid_angle_share(region), "dwell_share": dwell,
                         "fixation_share": share, "ttff_s": ttff})
    return pd.DataFrame(rows, columns=[*TRIAL_KEYS, "scene", "stimulus", "object", "chance_share",
                                       "dwell_share", "fixation_share", "ttff_s"])


def mask_dwell(
    gaze: pd.DataFrame,
    fixations: pd.DataFrame,
    regions: Mapping[str, Mapping[str, np.ndarray]],
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The mask-dwell table: per object of each stimulus and of each scene, the shares against chance.

    Returns
    -------
    pandas.DataFrame
        :data:`DWELL_COLUMNS`. ``level`` is ``"stimulus"`` or ``"scene"`` (then ``stimulus`` is ``"all"``);
        ``chance_share`` the object's solid-angle share (mean over the scene's stimuli); each measure is the
        mean over participants of their per-trial means, with its Student-t CI; ``fixated_trials`` the share
        of trials with at least one fixation on the object; ``n_participants`` how many contributed.
    """
    trials = trial_dwell(gaze, fixations, regions)
    if trials.empty:
        raise AnalysisError("mask_dwell: no gaze sample belongs to a stimulus with object masks; check the regions' stimulus keys")
    tables = []
    for level, by in (("stimulus", ["scene", "stimulus", "object"]), ("scene", ["scene", "object"])):
        summary = trials.groupby(by, observed=True).agg(
            fixated_trials=("ttff_s", lambda v: float(np.isfinite(v).mean())),
            n_participants=("participant", "nunique"),
        ).reset_index()
        # chance counts each stimulus once, however many trials showed it
        chance = trials.drop_duplicates(["stimulus", "object"]).groupby(by, observed=True)["chance_share"].mean()
        summary["chance_share"] = chance.reindex(pd.MultiIndex.from_frame(summary[by])).to_numpy()
        for measure, prefix in (("dwell_share", "dwell"), ("fixation_share", "fixation"), ("ttff_s", "ttff")):
            per_participant = trials.groupby([*by, "participant"], observed=True)[measure].mean().dropna().reset_index()
            if per_participant.empty:
                summary[[measure, f"{prefix}_ci_low", f"{prefix}_ci_high"]] = np.nan
                continue
            stats = mean_opinion_score(per_participant, by, value=measure, confidence=confidence)
            stats = stats.rename(columns={"mos": measure, "ci_low": f"{prefix}_ci_low", "ci_high": f"{prefix}_ci_high"})
            summary = summary.merge(stats[[*by, measure, f"{prefix}_ci_low", f"{prefix}_ci_high"]], on=by, how="left")
        summary.insert(0, "level", level)
        if level == "scene":
            summary.insert(2, "stimulus", "all")
        tables.append(summary)
    return pd.concat(tables, ignore_index=True)[list(DWELL_COLUMNS)]
