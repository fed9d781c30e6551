"""Saliency maps on the sphere, the metrics between maps (hand-computed cases) and split-half consistency."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad

from analysis.saliency import GAZE_SIGMA_DEG, HEAD_SIGMA_DEG, iter_saliency_maps, saliency_map, saliency_maps
from analysis.saliency_metrics import (
    auc_judd,
    cc,
    compare,
    compare_both_ways,
    inter_observer_consistency,
    kld,
    nss,
    sim,
)
from study.errors import AnalysisError
from study.sphere import angular_distance_deg, pixel_centres, pixel_solid_angles, unit_vectors

H, W = 256, 512


def exact_density(yaw: float, pitch: float, sigma_deg: float, truncate: float = 4.0) -> np.ndarray:
    """The continuous kernel, normalised by quadrature over the sphere, at the pixel centres."""
    sigma = math.radians(sigma_deg)
    radius = truncate * sigma
    z = 2 * math.pi * quad(lambda theta: math.exp(-0.5 * (theta / sigma) ** 2) * math.sin(theta), 0, radius)[0]
    longitude, latitude = pixel_centres(H, W)
    d = np.radians(angular_distance_deg(unit_vectors(longitude[None, :], latitude[:, None]), unit_vectors(yaw, pitch)))
    return np.where(d <= radius, np.exp(-0.5 * (d / sigma) ** 2) / z, 0.0)


def integral(density: np.ndarray) -> float:
    return float((density.sum(axis=1) * pixel_solid_angles(*density.shape)).sum())


@pytest.mark.parametrize("yaw, pitch", [(0.0, 0.0), (37.0, -20.0), (180.0, 10.0), (-60.0, 80.0), (10.0, 89.0), (0.0, -90.0)])
@pytest.mark.parametrize("sigma", [GAZE_SIGMA_DEG, HEAD_SIGMA_DEG])
def test_one_fixation_integrates_to_one_and_is_the_spherical_gaussian_everywhere(yaw, pitch, sigma):
    density = saliency_map([yaw], [pitch], height=H, width=W, sigma_deg=sigma)
    assert integral(density) == pytest.approx(1.0, abs=1e-12)
    exact = exact_density(yaw, pitch, sigma)
    # the same density as the continuous kernel, at the seam and at the poles too (≤ 1 % of the peak; the
    # rest is the sum over pixels standing in for the integral)
    assert np.abs(density - exact).max() < 0.01 * exact.max()
    row, col = np.unravel_index(density.argmax(), density.shape)
    longitude, latitude = pixel_centres(H, W)
    # the brightest pixel is the one holding the fixation (its centre at most half a pixel diagonal away)
    assert float(angular_distance_deg(unit_vectors(longitude[col], latitude[row]), unit_vectors(yaw, pitch))) <= 0.5


def test_the_map_is_continuous_across_the_seam():
    density = saliency_map([180.0], [10.0], height=H, width=W)
    # pixel centres either side of the seam are equally far from the fixation
    np.testing.assert_allclose(density[:, 0], density[:, -1], rtol=1e-5)
    assert density[:, 0].max() > 0.9 * density.max()
    # turned by half a turn it is the map of the same fixation at yaw 0: nothing is lost at the seam
    turned = saliency_map([0.0], [10.0], height=H, width=W)
    np.testing.assert_allclose(np.roll(density, W // 2, axis=1), turned, rtol=1e-5, atol=1e-6 * turned.max())


def test_near_the_pole_the_kernel_stays_round_and_spans_every_longitude():
    density = saliency_map([0.0], [88.0], height=H, width=W)
    assert (density[0] > 0).all()  # the top row is within 4σ of the fixation at every longitude
    # round: within 3σ the map is the same function of the angle in every direction, though those pixels
    # span all longitudes on one side of the pole and a few degrees on the other
    exact = exact_density(0.0, 88.0, GAZE_SIGMA_DEG)
    near = exact > exact.max() * math.exp(-4.5)
    ratio = density[near] / exact[near]
    assert near.sum() > 1000 and np.ptp(ratio) < 0.01


def test_weights_and_several_fixations_mix_linearly():
    one = saliency_map([0.0], [0.0], height=H, width=W)
    two = saliency_map([90.0], [0.0], height=H, width=W)
    mixed = saliency_map([0.0, 90.0], [0.0, 0.0], weights=[3.0, 1.0], height=H, width=W)
    np.testing.assert_allclose(mixed, 0.75 * one + 0.25 * two, atol=1e-12)


def test_maps_per_group_and_bad_input():
    fixations = pd.DataFrame({"participant": ["P1", "P1", "P2"], "stimulus": ["a", "b", "a"], "scene": "s",
                              "yaw_deg": [0.0, 10.0, 20.0], "pitch_deg": [0.0, 0.0, 0.0], "duration_s": [0.2, 0.3, 0.6]})
    per_stimulus = saliency_maps(fixations, ("stimulus",), height=64, width=128)
    assert list(per_stimulus) == [("a",), ("b",)]
    per_participant = dict(iter_saliency_maps(fixations, ("participant", "stimulus"), height=64, width=128))
    assert set(per_participant) == {("P1", "a"), ("P1", "b"), ("P2", "a")}
    weighted = saliency_maps(fixations, ("scene",), duration_weighted=True, height=64, width=128)[("s",)]
    expected = saliency_map([0, 10, 20], [0, 0, 0], weights=[0.2, 0.3, 0.6], height=64, width=128)
    np.testing.assert_allclose(weighted, expected)
    with pytest.raises(AnalysisError, match="2:1"):
        saliency_map([0], [0], height=64, width=100)
    with pytest.raises(AnalysisError, match=r"\|pitch\| <= 90°"):
        saliency_map([0], [95], height=64, width=128)
    with pytest.raises(AnalysisError, match="no fixation contributes"):
        saliency_map([], [], height=64, width=128)
    with pytest.raises(AnalysisError, match=r"lacks the columns \['duration_s'\]"):
        saliency_maps(fixations.drop(columns="duration_s"), duration_weighted=True)


# Hand-computed cases on a 4 × 8 map: rows span latitudes 90–45, 45–0, 0–−45, −45–−90°, so a polar-row pixel
# covers a = 1 − √2/2 ≈ 0.293 of what an equator-row pixel covers (per-pixel solid angle (π/4)·(sin φ₂ − sin φ₁)).
A = 1 - math.sqrt(2) / 2


def rows(*values) -> np.ndarray:
    return np.repeat(np.array(values, dtype=float)[:, None], 8, axis=1)


def test_sim_and_kld_weight_each_pixel_by_its_solid_angle():
    uniform = np.ones((4, 8))
    spike = np.zeros((4, 8))
    spike[0, 3] = 1.0
    # a uniform density puts the mass Ω/4π = a/16 on a polar pixel
    assert sim(uniform, spike) == pytest.approx(A / 16)
    assert kld(uniform, spike) == pytest.approx(math.log(16 / A))
    assert kld(spike, spike) == pytest.approx(0.0, abs=1e-12) and sim(spike, spike) == pytest.approx(1.0)
    # the reference is what is predicted: a zero where the reference has mass costs log(1/ε)
    assert kld(spike, uniform) > 20


def test_cc_is_the_solid_angle_weighted_pearson_correlation():
    top = rows(1, 0, 0, 0)
    poles = rows(1, 0, 0, 1)
    # weighted: means a/2 and a, cov a(1−a)/2, variances (a/2)(1−a/2) and a(1−a) → √((1−a)/(2−a)) = √(√2 − 1)
    assert cc(top, poles) == pytest.approx(math.sqrt(math.sqrt(2) - 1))
    assert cc(top, poles) != pytest.approx(np.corrcoef(top.ravel(), poles.ravel())[0, 1], abs=0.05)  # 0.577 unweighted
    assert cc(top, top) == pytest.approx(1.0) and cc(top, rows(0, 1, 1, 1)) == pytest.approx(-1.0)
    with pytest.raises(AnalysisError, match="constant"):
        cc(np.ones((4, 8)), top)


def test_nss_and_auc_judd_by_hand():
    longitude, latitude = pixel_centres(4, 8)
    top = rows(1, 0, 0, 0)  # mean 1/4, SD √3/4 over pixels
    assert nss(top, [longitude[2]], [latitude[0]]) == pytest.approx(math.sqrt(3))
    assert nss(top, [longitude[2], longitude[5]], [latitude[0], latitude[2]]) == pytest.approx(1 / math.sqrt(3))
    ramp = np.arange(32, dtype=float).reshape(4, 8)
    # fixations on the two highest pixels: a perfect classifier
    assert auc_judd(ramp, longitude[[7, 6]], latitude[[3, 3]]) == pytest.approx(1.0)
    # on the lowest pixel only: the curve is the diagonal
    assert auc_judd(ramp, [longitude[0]], [latitude[0]]) == pytest.approx(0.5)
    # on the highest and the lowest: (0,0) → (0,½) → (1,1), area ¾
    assert auc_judd(ramp, longitude[[7, 0]], latitude[[3, 0]]) == pytest.approx(0.75)


def test_compare_and_its_symmetric_form():
    a = saliency_map([0.0, 30.0], [0.0, 5.0], height=64, width=128)
    b = saliency_map([2.0, 28.0], [1.0, 4.0], height=64, width=128)
    one_way = compare(a, b, [2.0, 28.0], [1.0, 4.0])
    assert set(one_way) == {"kld", "cc", "sim", "nss", "auc_judd"}
    both = compare_both_ways(a, ([0.0, 30.0], [0.0, 5.0]), b, ([2.0, 28.0], [1.0, 4.0]))
    other_way = compare(b, a, [0.0, 30.0], [0.0, 5.0])
    for name in both:
        assert both[name] == pytest.approx((one_way[name] + other_way[name]) / 2)
    assert both["cc"] == pytest.approx(one_way["cc"])  # CC and SIM are symmetric already
    assert 0.5 < both["cc"] < 1 and both["auc_judd"] > 0.9 and both["nss"] > 2
    with pytest.raises(AnalysisError, match="different sizes"):
        cc(a, np.ones((32, 64)))


def fixation_table(rng, participants: int, stimuli=("s1", "s2"), shared: float = 0.0, per_trial: int = 30,
                   hot: dict | None = None) -> pd.DataFrame:
    """Fixations of each participant per stimulus: a ``shared`` share at common hot spots, the rest anywhere."""
    hot = hot or {s: rng.uniform([-180, -40], [180, 40], (3, 2)) for s in stimuli}
    rows = []
    for p in range(participants):
        for s in stimuli:
            for _ in range(per_trial):
                if rng.random() < shared:
                    yaw, pitch = hot[s][rng.integers(3)] + rng.normal(0, 2, 2)
                else:
                    yaw, pitch = rng.uniform(-180, 180), rng.uniform(-60, 60)
                rows.append({"participant": f"P{p:02d}", "stimulus": s, "yaw_deg": yaw, "pitch_deg": pitch})
    return pd.DataFrame(rows)


def test_two_participants_have_one_split_the_cc_of_their_maps():
    fixations = fixation_table(np.random.default_rng(0), 2, stimuli=("s1",), shared=0.5)
    result = inter_observer_consistency(fixations, height=64, width=128, n_splits=20)
    maps = {p: saliency_map(g["yaw_deg"], g["pitch_deg"], height=64, width=128) for p, g in fixations.groupby("participant")}
    assert result.loc[0, "cc"] == pytest.approx(cc(maps["P00"], maps["P01"]), rel=1e-9)
    assert result["stimulus"].tolist() == ["s1", "all"]
    assert result["ci_low"].isna().all()  # leaving one of two out leaves nobody to compare: no interval


def test_split_half_cc_equals_the_cc_of_the_two_halves_maps():
    fixations = fixation_table(np.random.default_rng(3), 6, stimuli=("s1",), shared=0.5)
    # with one split only, the estimate is the CC of that split's two maps; which split it was is unknown,
    # so compare with every split of six participants into three and three
    result = inter_observer_consistency(fixations, height=64, width=128, n_splits=1, seed=4)
    codes = sorted(fixations["participant"].unique())
    from itertools import combinations
    possible = []
    for half in combinations(codes, 3):
        a = fixations[fixations["participant"].isin(half)]
        b = fixations[~fixations["participant"].isin(half)]
        possible.append(cc(saliency_map(a["yaw_deg"], a["pitch_deg"], height=64, width=128),
                           saliency_map(b["yaw_deg"], b["pitch_deg"], height=64, width=128)))
    assert min(abs(result.loc[0, "cc"] - value) for value in possible) < 1e-9


def test_consistency_is_high_when_observers_share_hot_spots_and_low_when_they_do_not():
    rng = np.random.default_rng(1)
    shared = inter_observer_consistency(fixation_table(rng, 12, shared=0.8), height=64, width=128)
    scattered = inter_observer_consistency(fixation_table(rng, 12, shared=0.0), height=64, width=128)
    assert list(shared.columns) == ["stimulus", "n_participants", "cc", "ci_low", "ci_high"]
    assert (shared["cc"] > 0.7).all() and (scattered["cc"] < 0.35).all()
    for table in (shared, scattered):
        assert (table["ci_low"] < table["cc"]).all() and (table["cc"] < table["ci_high"]).all()
    assert shared["n_participants"].tolist() == [12, 12, 12]
    identical = fixation_table(np.random.default_rng(2), 1, shared=0.5)
    clones = pd.concat([identical.assign(participant=f"P{k}") for k in range(6)])
    result = inter_observer_consistency(clones, height=64, width=128)
    np.testing.assert_allclose(result[["cc", "ci_low", "ci_high"]].to_numpy(), 1.0, atol=1e-9)
    with pytest.raises(AnalysisError, match="at least 2 participants"):
        inter_observer_consistency(identical, height=64, width=128)


def test_the_interval_is_as_wide_as_the_estimate_varies_between_panels():
    """The jackknife SE of one panel of 12 observers against the spread of the estimate over 40 panels."""
    rng = np.random.default_rng(8)
    hot = {"s1": rng.uniform([-180, -40], [180, 40], (3, 2))}
    estimates, half_widths = [], []
    for _ in range(40):
        table = inter_observer_consistency(fixation_table(rng, 12, stimuli=("s1",), shared=0.4, hot=hot),
                                           height=32, width=64, n_splits=30, sigma_deg=4.0)
        estimates.append(table.loc[0, "cc"])
        half_widths.append((table.loc[0, "ci_high"] - table.loc[0, "ci_low"]) / 2)
    se = np.median(half_widths) / 2.201  # t(0.975, 11)
    assert 0.6 < se / np.std(estimates, ddof=1) < 1.6
