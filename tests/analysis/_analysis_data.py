"""Builders shared by the analysis tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def answers_from_matrix(u: np.ndarray, *, scale: str = "ACR", scene_of=None, low: int = 1, high: int = 5) -> pd.DataFrame:
    """Long-format answers of a (presentations, observers) score matrix; presentation j is stimulus s{j}."""
    n_pres, n_obs = u.shape
    rows = []
    for j in range(n_pres):
        for i in range(n_obs):
            if np.isfinite(u[j, i]):
                rows.append({
                    "participant": f"O{i:02d}", "training": False, "stimulus": f"s{j:02d}",
                    "scene": scene_of(j) if scene_of else "vehicle", "scale": scale, "item": "overall",
                    "value": u[j, i], "scale_min": low, "scale_max": high, "protocol_hash": "h",
                })
    return pd.DataFrame(rows)
