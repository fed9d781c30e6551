"""The synthetic eye tracker of scripted sessions, with its eye drawn towards the stimuli's masked objects.

Each generated stimulus knows, from its manifest line, the stage-1 masks it was made from; projected onto the
equirect with the generator's own projection (:func:`analysis.mask_gaze.project_masks`) they become regions the
simulated eye is drawn to (:class:`study.scanpath.TargetRegion`). Only this layer may join the study, the
viewer and the analysis (``tests/test_layering.py``), so the demo and ``session run --backend headless`` build
their tracker here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy as sa

from study.driver import keyed_rng
from study.models import Stimulus
from study.scanpath import TargetRegion, TrackerModel, ViewingModel

#: Share of the simulated fixations that go to a pulled object rather than a free-viewing step.
TARGET_PULL = 0.35
#: Equirect size the regions are drawn from.
REGION_SIZE = (256, 512)


def pulled_objects(labels: list[str]) -> list[str]:
    """The objects the simulated eye is drawn to: the first the scene spec names (its subject: the car, the
    people, the sofa, the mountains); the others are the controls the report compares them with."""
    return labels[:1]


def target_regions(db, *, base_dir: str | Path | None = None) -> dict[str, list[TargetRegion]]:
    """``{stimulus path: [its pulled objects' regions]}`` for every test stimulus whose generator metadata names
    masks that can be read (others are viewed freely).

    Relative mask paths start at ``base_dir`` (default: the current folder, where ``panostudy generate sets``
    ran).
    """
    from analysis.mask_gaze import project_masks, stimulus_masks
    from study.errors import AnalysisError

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    with db.Session() as session:
        stimuli = session.execute(sa.select(Stimulus.path, Stimulus.generator_metadata).where(
            Stimulus.study_id == db.study_id, Stimulus.training.is_(False))).all()
    regions: dict[str, list[TargetRegion]] = {}
    for path, metadata in stimuli:
        try:
            masks = stimulus_masks(metadata or {}, base_dir=base, where=path)
        except AnalysisError:
            continue
        chosen = pulled_objects(list(masks.labels))
        projected = project_masks(masks.subset(chosen), *REGION_SIZE)
        regions[path] = [TargetRegion.from_equirect(label, region) for label, region in projected.items() if region.any()]
    return regions


def participant_tracker(seed: int, participant: str) -> TrackerModel:
    """A simulated participant's eye tracker: a fit that is off by 0.2–1.0° in a random direction, noise of
    0.08–0.2°, blinks; seeded by (seed, participant), so the validation step has something to measure."""
    rng = keyed_rng(seed, participant, "tracker")
    size, bearing = rng.uniform(0.2, 1.0), rng.uniform(0.0, 2.0 * np.pi)
    return TrackerModel(noise_deg=float(rng.uniform(0.08, 0.2)),
                        bias_deg=(float(size * np.cos(bearing)), float(size * np.sin(bearing))))


def synthetic_gaze(seed: int, participant: str, regions: dict[str, list[TargetRegion]]):
    """The synthetic eye tracker of one simulated participant (``viewer.gaze.SyntheticGaze``)."""
    from viewer.gaze import SyntheticGaze

    return SyntheticGaze(seed, regions, viewing=ViewingModel(target_pull=TARGET_PULL),
                         tracker=participant_tracker(seed, participant))
