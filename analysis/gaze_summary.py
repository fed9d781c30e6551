"""Everything the report shows about where participants looked with their eyes, from the stored gaze samples.

:func:`gaze_analysis` joins the pure computations of part one into the report's tables and maps:

1. I-VT fixations of every test trial (:func:`analysis.fixations.detect_fixations`);
2. a saliency map per stimulus (σ = 2°) and, per scene, the gaze map against the head-only map of the same
   trials (viewport-centre "fixations", σ = 3.34°) with KLD, CC, SIM, NSS and AUC-Judd of the head map as a
   predictor of the gaze (:func:`analysis.saliency_metrics.compare`);
3. split-half inter-observer consistency per stimulus with its jackknife CI;
4. the mask-dwell table of each stimulus's objects, where its generator masks can be read
   (:func:`analysis.mask_gaze.mask_dwell`);
5. the eye-tracker validations: each session's final attempt, the number of attempts, and the mean accuracy
   per target over participants.

Maps are kept small (512 × 256): they are drawn as figures, and CC between σ = 2° maps does not depend on the
resolution (``benchmarks/bench_gaze.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fixations import detect_fixations
from analysis.saliency import HEAD_SIGMA_DEG, saliency_maps
from analysis.saliency_metrics import compare, inter_observer_consistency
from study.errors import AnalysisError, PanostudyError

MAP_SIZE = (256, 512)
DWELL_SIZE = (512, 1024)
NO_GAZE_NOTE = ("no eye gaze: this study recorded head pose only (no eye tracker, or the runtime reported no "
                "eye-gaze support)")
VALIDATION_SUMMARY_COLUMNS = ("participant", "session_number", "attempts", "accuracy_deg", "precision_rms_s2s_deg",
                              "precision_sd_deg", "data_loss_pct", "recalibrate", "gaze_source")


@dataclass(frozen=True)
class GazeAnalysis:
    """The report's gaze tables and maps (see the module docstring); ``notes`` say what could not be done."""

    samples: int
    participants: int
    fixations: pd.DataFrame
    stimulus_maps: dict[str, np.ndarray]
    scene_maps: dict[str, tuple[np.ndarray, np.ndarray | None]]
    head_vs_gaze: pd.DataFrame
    consistency: pd.DataFrame
    dwell: pd.DataFrame | None
    validation: pd.DataFrame
    validation_targets: pd.DataFrame
    notes: tuple[str, ...] = field(default_factory=tuple)


def validation_summary(validation: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per participant and session: the final attempt's overall measures, how many attempts it took, whether
    the final one still called for recalibration; and per target the mean accuracy of the final attempts."""
    empty = pd.DataFrame(columns=list(VALIDATION_SUMMARY_COLUMNS))
    if validation is None or validation.empty:
        return empty, pd.DataFrame(columns=["target", "target_yaw_deg", "target_pitch_deg", "accuracy_deg", "n"])
    keys = ["participant", "session_number"]
    final = validation.loc[validation.groupby(keys, observed=True)["attempt"].transform("max") == validation["attempt"]]
    overall = final[final["level"] == "overall"].copy()
    overall["attempts"] = overall["attempt"].astype(int)
    summary = overall[list(VALIDATION_SUMMARY_COLUMNS)].reset_index(drop=True)
    targets = (final[final["level"] == "target"].groupby(["target", "target_yaw_deg", "target_pitch_deg"], observed=True)
               .agg(accuracy_deg=("accuracy_deg", "mean"), n=("accuracy_deg", "count")).reset_index())
    return summary, targets


def stimulus_regions(stimuli: pd.DataFrame | None, *, root: Path) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Each generated stimulus's objects on the equirect (its stage-1 masks through the generator's projection),
    and a note for every stimulus whose masks could not be read."""
    from analysis.mask_gaze import project_masks, stimulus_masks

    regions, missing = {}, []
    if stimuli is None:
        return regions, missing
    for row in stimuli.itertuples():
        if row.training or row.generator_metadata is None or pd.isna(row.generator_metadata):
            continue
        metadata = json.loads(row.generator_metadata)
        if "masks" not in metadata:
            continue
        try:
            masks = stimulus_masks(metadata, base_dir=root, where=str(row.stimulus))
        except PanostudyError as error:
            missing.append(str(error))
            continue
        regions[str(row.stimulus)] = project_masks(masks, *DWELL_SIZE)
    return regions, missing


def gaze_analysis(gaze: pd.DataFrame | None, poses: pd.DataFrame | None, validation: pd.DataFrame | None,
                  stimuli: pd.DataFrame | None, test_stimuli, *, root: Path = Path.cwd(),
                  seed: int = 0) -> GazeAnalysis | None:
    """The report's gaze analysis, or None when no trial recorded gaze (see :data:`NO_GAZE_NOTE`).

    Parameters
    ----------
    gaze : pandas.DataFrame
        ``study.export.load_gaze`` (interrupted showings left out).
    poses : pandas.DataFrame
        The validated test poses (for the head-only maps of the same scenes).
    validation : pandas.DataFrame
        ``study.export.load_validation``.
    stimuli : pandas.DataFrame
        ``study.export.load_stimuli`` (generator metadata: masks).
    test_stimuli : iterable of str
        The stimuli of the analysed test answers: training and excluded stimuli are left out.
    root : Path
        Where relative stimulus and mask paths start.
    seed : int
        Seeds the random halves of the inter-observer consistency.
    """
    summary, per_target = validation_summary(validation)
    if gaze is None or gaze.empty:
        return None
    wanted = set(map(str, test_stimuli))
    gaze = gaze[gaze["stimulus"].astype(str).isin(wanted)].copy()
    if gaze.empty:
        return None
    gaze["participant"] = gaze["participant"].astype(str)
    for column in ("stimulus", "scene"):
        gaze[column] = gaze[column].astype(str)
    notes: list[str] = []
    fixations = detect_fixations(gaze, method="ivt")
    height, width = MAP_SIZE
    stimulus_maps = {key[0]: m for key, m in saliency_maps(fixations, ("stimulus",), height=height, width=width).items()}
    gaze_scene = {key[0]: m for key, m in saliency_maps(fixations, ("scene",), height=height, width=width).items()}
    head_scene: dict[str, np.ndarray] = {}
    if poses is not None and len(poses):
        seen = poses[poses["stimulus"].astype(str).isin(wanted)].assign(participant=lambda f: f["participant"].astype(str),
                                                                         scene=lambda f: f["scene"].astype(str))
        head = detect_fixations(seen, method="head")
        head_scene = {key[0]: m for key, m in saliency_maps(head, ("scene",), height=height, width=width,
                                                            sigma_deg=HEAD_SIGMA_DEG).items()}
    rows = []
    for scene, gaze_map in gaze_scene.items():
        if scene in head_scene:
            of_scene = fixations[fixations["scene"] == scene]
            metrics = compare(head_scene[scene], gaze_map, of_scene["yaw_deg"].to_numpy(), of_scene["pitch_deg"].to_numpy())
            rows.append({"scene": scene, "gaze_fixations": len(of_scene), **metrics})
    head_vs_gaze = pd.DataFrame(rows, columns=["scene", "gaze_fixations", "kld", "cc", "sim", "nss", "auc_judd"])
    scene_maps = {scene: (m, head_scene.get(scene)) for scene, m in gaze_scene.items()}
    participants = fixations["participant"].nunique()
    if participants >= 2:
        consistency = inter_observer_consistency(fixations, by="stimulus", seed=seed, height=height, width=width)
    else:
        consistency = pd.DataFrame(columns=["stimulus", "n_participants", "cc", "ci_low", "ci_high"])
        notes.append("inter-observer consistency needs at least two participants with gaze")
    regions, missing = stimulus_regions(stimuli, root=root)
    dwell = None
    if regions:
        from analysis.mask_gaze import mask_dwell

        try:
            dwell = mask_dwell(gaze, fixations, regions)
        except AnalysisError as error:
            notes.append(str(error))
    else:
        notes.append("no stimulus names generator masks (only stimuli made by 'panostudy generate sets' have them): "
                     "no mask-dwell table")
    notes += [f"mask-dwell table without this stimulus: {text}" for text in missing]
    return GazeAnalysis(len(gaze), participants, fixations, stimulus_maps, scene_maps, head_vs_gaze, consistency, dwell,
                        summary, per_target, tuple(notes))
