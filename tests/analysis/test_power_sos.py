"""A-priori N and detectable differences (against VQEG's published example and an independent simulation), the SOS
parameter a, and the bootstrap intervals of Table 1."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from typer.testing import CliRunner

from analysis.power import holm_power, paired_t_power, participants_needed, smallest_detectable_difference
from analysis.screening import screen
from analysis.sos import sos_hypothesis, sos_points
from analysis.table1 import table1
from panostudy.cli import app


@pytest.mark.parametrize("sd, n", [(0.8, 18), (1.0, 25)])
def test_bonferroni_matches_the_vqeg_tools_example(sd, n):
    # Brunnström & Barkowsky (2018): 100 comparisons at ΔMOS = 1 need 18 or 25 subjects depending on the SD.
    plan = participants_needed(1.0, sd, 100).set_index("correction")
    assert plan.loc["bonferroni", "n"] == n
    assert plan.loc["none", "n"] <= plan.loc["holm", "n"] <= plan.loc["bonferroni", "n"]
    assert (plan["power"] >= 0.8).all()


def test_paired_power_agrees_with_statsmodels_and_survives_its_nan():
    from statsmodels.stats.power import TTestPower

    for n, d, alpha in [(10, 0.5, 0.05), (32, 0.3, 0.05 / 6), (18, 1.25, 5e-4)]:
        assert paired_t_power(n, d, alpha) == pytest.approx(TTestPower().power(d, n, alpha), abs=1e-10)
    assert np.isnan(TTestPower().power(1.25, 20, 5e-4))  # statsmodels' gap: scipy's far lower tail is NaN
    assert 0.88 < paired_t_power(20, 1.25, 5e-4) < 0.89


def test_holm_power_matches_a_simulation_of_whole_studies():
    from statsmodels.stats.multitest import multipletests

    from scipy import stats

    n, d, m, alpha = 20, 0.6, 6, 0.05
    diffs = np.random.default_rng(3).normal(d, 1.0, (800, n, m))  # 800 studies of n paired differences
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / np.sqrt(n))
    p = 2 * stats.t.sf(np.abs(t), n - 1)
    order = np.sort(p, axis=1)
    rejected = np.cumprod(order <= alpha / (m - np.arange(m)), axis=1).sum(axis=1)
    for row, count in zip(p[:50], rejected[:50]):  # the same decisions as statsmodels' Holm
        assert multipletests(row, alpha=alpha, method="holm")[0].sum() == count
    assert holm_power(n, d, m, alpha) == pytest.approx(rejected.mean() / m, abs=0.03)
    assert paired_t_power(n, d, alpha / m) < holm_power(n, d, m, alpha) < paired_t_power(n, d, alpha)


def test_smallest_detectable_difference_inverts_the_plan():
    delta = smallest_detectable_difference(52, 1.0, 6)
    assert delta == pytest.approx(0.5, abs=0.01)  # 52 participants is what ΔMOS 0.5, SD 1, 6 comparisons need
    assert smallest_detectable_difference(52, 1.0, 6, correction="holm") < delta


def test_power_command_prints_the_plan_and_refuses_bad_input():
    result = CliRunner().invoke(app, ["power", "--delta", "0.5", "--sd", "1.0", "--comparisons", "6"])
    assert result.exit_code == 0, result.output
    assert "bonferroni" in result.output and "holm" in result.output and " 52 " in result.output
    for args, message in [(["--delta", "0.5", "--sd", "0"], "--sd 0.0"), (["--delta", "1", "--sd", "1", "--power", "1.5"], "--power 1.5"),
                          (["--delta", "1", "--sd", "1", "--comparisons", "0"], "--comparisons 0")]:
        result = CliRunner().invoke(app, ["power", *args])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def _answers(rows):
    return pd.DataFrame(rows, columns=["participant", "stimulus", "scale", "item", "scene", "value"]).assign(
        scale_min=1, scale_max=5, training=False)


def test_sos_parameter_is_the_least_squares_fit():
    rng = np.random.default_rng(0)
    rows = []
    for j in range(30):
        mos = rng.uniform(1.5, 4.5)
        for i in range(24):
            rows.append((f"P{i}", f"s{j}", "ACR", "overall", "street", int(np.clip(np.rint(rng.normal(mos, 0.8)), 1, 5))))
    answers = _answers(rows)
    fit = sos_hypothesis(answers).iloc[0]
    points = sos_points(answers)
    g = (points["mos"] - 1) * (5 - points["mos"])
    direct = optimize.minimize_scalar(lambda a: np.sum((points["sos"] - np.sqrt(a * g)) ** 2), bounds=(0, 2), method="bounded")
    assert fit["a"] == pytest.approx(direct.x, abs=1e-5)
    assert fit["a_ci_low"] < fit["a"] < fit["a_ci_high"] and fit["presentations"] == 30
    # Ratings only at the scale's ends are the largest spread possible: a = 1 (× N/(N−1) for the N−1 SD).
    extreme = _answers([(f"P{i}", f"s{j}", "ACR", "overall", "street", 5 if i < 6 + j else 1)
                        for j in range(10) for i in range(24)])
    assert sos_hypothesis(extreme).iloc[0]["a"] == pytest.approx(24 / 23, rel=1e-6)


def test_bootstrap_stays_in_the_scale_where_the_t_interval_leaves_it():
    # Eight participants rate 5 and two rate 2: the t interval's upper end passes 5.
    rows = [(f"P{i}", "s0", "ACR", "overall", "street", 5 if i < 8 else 2) for i in range(10)]
    rows += [(f"P{i}", "s1", "ACR", "overall", "indoor", 3 + (i % 3)) for i in range(10)]
    t = table1(screen(_answers(rows), "none"))
    street = t.cells.set_index("scene").loc["street"]
    assert street["ci_high"] > 5 and street["t_outside_scale"]
    assert street["boot_low"] < street["mos"] < street["boot_high"] <= 5
    indoor = t.cells.set_index("scene").loc["indoor"]
    assert not indoor["t_outside_scale"]
    # For a well-behaved cell the BCa interval is close to the t interval.
    assert (indoor["boot_high"] - indoor["boot_low"]) == pytest.approx(indoor["ci_high"] - indoor["ci_low"], rel=0.35)
    assert any("beyond the scale's range" in n for n in t.notes)
