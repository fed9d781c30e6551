"""Target lists of an eye-tracker validation step: where the targets are, how long each is shown.

A validation shows targets at known directions on a neutral background and the participant looks at each
in turn; accuracy, precision and data loss are then computed from the gaze recorded meanwhile
(``study.gaze_validation``). The default is the usual 3 × 3 grid at ±15° (vexptoolbox, SightLab),
1.5 s per target of which the first 0.5 s (the eye finding the target) are discarded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from study.errors import ProtocolError

DEFAULT_SPREAD_DEG = 15.0
DEFAULT_TARGET_S = 1.5
DEFAULT_DISCARD_S = 0.5
#: A target must lie in front of the participant: within ±90° of straight ahead in yaw and in pitch.
MAX_TARGET_DEG = 90.0


def grid_targets(spread_deg: float = DEFAULT_SPREAD_DEG) -> tuple[tuple[float, float], ...]:
    """The 3 × 3 grid ``(yaw_deg, pitch_deg)`` at ``0, ±spread_deg``: centre first, then row by row from the top."""
    rows = [(yaw, pitch) for pitch in (spread_deg, 0.0, -spread_deg) for yaw in (-spread_deg, 0.0, spread_deg)]
    return ((0.0, 0.0), *(target for target in rows if target != (0.0, 0.0)))


def check_targets(targets: Sequence[Sequence[float]], where: str = "validation targets") -> tuple[tuple[float, float], ...]:
    """The targets as ``((yaw_deg, pitch_deg), ...)``, each checked to be a finite pair within ±90°.

    Raises
    ------
    ProtocolError
        One line naming ``where`` and the first bad entry, saying what is wrong and what to write instead.
    """
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or len(targets) == 0:
        raise ProtocolError(f"{where}: give a non-empty list of [yaw_deg, pitch_deg] pairs, e.g. [[0, 0], [15, 15]]")
    checked = []
    for index, target in enumerate(targets):
        if (
            isinstance(target, (str, bytes))
            or not isinstance(target, Sequence)
            or len(target) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in target)
        ):
            raise ProtocolError(f"{where}[{index}] = {target!r}: expected a pair of numbers [yaw_deg, pitch_deg], e.g. [15, 0]")
        yaw, pitch = float(target[0]), float(target[1])
        for name, value in (("yaw", yaw), ("pitch", pitch)):
            if abs(value) > MAX_TARGET_DEG:
                raise ProtocolError(
                    f"{where}[{index}] = [{yaw:g}, {pitch:g}]: {name} {value:g}° is outside ±{MAX_TARGET_DEG:g}°; "
                    "validation targets must lie in front of the participant (e.g. ±15°)"
                )
        checked.append((yaw, pitch))
    return tuple(checked)
