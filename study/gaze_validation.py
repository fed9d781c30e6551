"""Eye-tracker validation: accuracy, precision and data loss per target and overall (vexptoolbox's measures).

The session computes them as soon as a validation ends (the console says "recalibrate" from them), so they
live beside the target lists in ``study/``; the report reads the stored results.

For each target the samples of its first ``discard_s`` seconds (the eye finding it) are dropped. Then, over
the valid samples :math:`\\mathbf{g}_i` of that target at direction :math:`\\mathbf{t}`:

- **accuracy** :math:`= \\frac1n \\sum_i \\angle(\\mathbf{g}_i, \\mathbf{t})`, the mean angular error (°);
- **precision RMS-S2S** :math:`= \\sqrt{\\frac1{m} \\sum_i \\angle(\\mathbf{g}_i, \\mathbf{g}_{i+1})^2}` over
  the m pairs of consecutive samples that are both valid;
- **precision SD** :math:`= \\sqrt{\\frac1n \\sum_i \\angle(\\mathbf{g}_i, \\bar{\\mathbf{g}})^2}`, the spread
  around the samples' mean direction :math:`\\bar{\\mathbf{g}}`;
- **data loss**: the share of the target's samples (after the discarded part) that are invalid, in %.

Overall accuracy and precision are the means over targets (each target counts once, however many samples it
kept); overall data loss pools the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.errors import AnalysisError
from study.sphere import angular_distance_deg, mean_direction, unit_vectors
from study.validation_targets import DEFAULT_DISCARD_S, check_targets

VALIDATION_SAMPLE_COLUMNS = ("target", "t", "yaw_deg", "pitch_deg", "valid")
PER_TARGET_COLUMNS = (
    "target", "target_yaw_deg", "target_pitch_deg", "n_samples", "n_valid",
    "accuracy_deg", "precision_rms_s2s_deg", "precision_sd_deg", "data_loss_pct",
)


@dataclass(frozen=True)
class ValidationResult:
    """Per-target table (:data:`PER_TARGET_COLUMNS`) and the overall figures."""

    per_target: pd.DataFrame
    accuracy_deg: float
    precision_rms_s2s_deg: float
    precision_sd_deg: float
    data_loss_pct: float

    def overall(self) -> dict[str, float]:
        return {
            "accuracy_deg": self.accuracy_deg,
            "precision_rms_s2s_deg": self.precision_rms_s2s_deg,
            "precision_sd_deg": self.precision_sd_deg,
            "data_loss_pct": self.data_loss_pct,
        }

    def needs_recalibration(self, threshold_deg: float) -> bool:
        """True when the overall accuracy is worse than ``threshold_deg`` (or could not be measured)."""
        return not self.accuracy_deg <= threshold_deg


def _target_measures(samples: pd.DataFrame, target: np.ndarray) -> dict[str, float]:
    valid = samples["valid"].to_numpy(dtype=bool)
    n = valid.size
    vectors = unit_vectors(samples["yaw_deg"].to_numpy(dtype=np.float64), samples["pitch_deg"].to_numpy(dtype=np.float64))
    good = vectors[valid]
    if good.shape[0] == 0:
        return {"n_samples": n, "n_valid": 0, "accuracy_deg": np.nan, "precision_rms_s2s_deg": np.nan,
                "precision_sd_deg": np.nan, "data_loss_pct": 100.0 if n else np.nan}
    pairs = valid[:-1] & valid[1:]
    steps = angular_distance_deg(vectors[:-1][pairs], vectors[1:][pairs])
    spread = angular_distance_deg(good, mean_direction(good))
    return {
        "n_samples": n,
        "n_valid": int(good.shape[0]),
        "accuracy_deg": float(angular_distance_deg(good, target).mean()),
        "precision_rms_s2s_deg": float(np.sqrt(np.mean(steps**2))) if steps.size else np.nan,
        "precision_sd_deg": float(np.sqrt(np.mean(spread**2))),
        "data_loss_pct": 100.0 * (1.0 - good.shape[0] / n),
    }


def validation_metrics(
    samples: pd.DataFrame, targets: Sequence[Sequence[float]], *, discard_s: float = DEFAULT_DISCARD_S
) -> ValidationResult:
    """Accuracy, precision and data loss of one validation (one participant, one session).

    Parameters
    ----------
    samples : pandas.DataFrame
        Columns :data:`VALIDATION_SAMPLE_COLUMNS`: ``target`` the index into ``targets`` shown when the
        sample was taken, ``t`` seconds since that target appeared, the gaze direction and validity.
    targets : sequence of (yaw_deg, pitch_deg)
        The targets' directions, each within ±90° (checked: one-line error otherwise).
    discard_s : float
        Leading seconds of each target that are not measured.

    Returns
    -------
    ValidationResult
    """
    checked = check_targets(targets)
    missing = [column for column in VALIDATION_SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise AnalysisError(f"validation samples lack the columns {missing}; they need {list(VALIDATION_SAMPLE_COLUMNS)}")
    indices = samples["target"].to_numpy()
    unknown = sorted(set(indices.tolist()) - set(range(len(checked))))
    if unknown:
        raise AnalysisError(f"validation samples name targets {unknown[:5]} but only {len(checked)} targets were given")
    kept = samples[samples["t"].to_numpy(dtype=np.float64) >= discard_s]
    rows = []
    for index, (yaw, pitch) in enumerate(checked):
        of_target = kept[kept["target"] == index].sort_values("t")
        rows.append({"target": index, "target_yaw_deg": yaw, "target_pitch_deg": pitch,
                     **_target_measures(of_target, unit_vectors(yaw, pitch))})
    table = pd.DataFrame(rows, columns=list(PER_TARGET_COLUMNS))
    n_total = int(table["n_samples"].sum())
    with np.errstate(invalid="ignore"):
        return ValidationResult(
            per_target=table,
            accuracy_deg=float(table["accuracy_deg"].mean()),
            precision_rms_s2s_deg=float(table["precision_rms_s2s_deg"].mean()),
            precision_sd_deg=float(table["precision_sd_deg"].mean()),
            data_loss_pct=float(100.0 * (1.0 - table["n_valid"].sum() / n_total)) if n_total else float("nan"),
        )
