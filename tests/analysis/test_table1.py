import numpy as np
import pandas as pd
import pytest

from analysis.screening import screen
from analysis.simulate import PAPER_SCENES, simulate_study
from analysis.table1 import table1, to_csv, to_latex, to_markdown, to_rich
from analysis.validate import prepare_answers


@pytest.fixture(scope="module")
def paper_study():
    return simulate_study(n_participants=32, stimuli_per_scene=5, pose_rate_hz=0, seed=2026)


def test_table1_layout_is_the_papers(paper_study):
    t = table1(screen(prepare_answers(paper_study.answers), "none"))
    wide = t.wide()
    assert list(wide.index) == ["ACR", "VAR", "SSDS", "PCR"]
    assert list(wide.columns) == list(PAPER_SCENES)
    assert (t.cells["n"] == 32).all()
    assert (t.cells["half_width"] > 0).all()


def test_table1_means_are_within_their_cis_of_the_truth(paper_study):
    answers = prepare_answers(paper_study.answers)
    for method in ("none", "bt500"):
        cells = table1(screen(answers, method)).cells.merge(paper_study.scene_means, on=["scale", "scene"])
        inside = (cells["ci_low"] <= cells["expected"]) & (cells["expected"] <= cells["ci_high"])
        assert inside.all(), cells.loc[~inside, ["scale", "scene", "mos", "ci_low", "ci_high", "expected"]]
    # The simulated truth is the paper's Table 1; VAR/vehicle (3.2) is clearly below VAR/street (3.92).
    wide = table1(screen(answers, "none")).wide()
    assert wide.loc["VAR", "vehicle"] < wide.loc["VAR", "street"] - 0.4


def test_table1_cells_are_means_of_participant_means(paper_study):
    answers = prepare_answers(paper_study.answers)
    t = table1(screen(answers, "none"))
    rows = answers[(answers["scale"] == "SSDS") & (answers["scene"] == "indoor")]
    per_participant = rows.groupby("participant", observed=True)["value"].mean()
    cell = t.cells.set_index(["scale", "scene"]).loc[("SSDS", "indoor")]
    assert cell["mos"] == pytest.approx(per_participant.mean())
    assert cell["half_width"] == pytest.approx(2.0395 * per_participant.std(ddof=1) / np.sqrt(32), rel=1e-4)


def test_mle_table_uses_x_e_and_asymptotic_cis(paper_study):
    answers = prepare_answers(paper_study.answers)
    screened = screen(answers, "mle")
    t = table1(screened)
    assert "asymptotic" in t.ci_method
    pres = screened.presentations
    expected = pres[(pres["scale"] == "ACR") & (pres["scene"] == "street")]["x_e"].mean()
    assert t.cells.set_index(["scale", "scene"]).loc[("ACR", "street"), "mos"] == pytest.approx(expected)


def test_renderers_show_every_cell(paper_study):
    t = table1(screen(prepare_answers(paper_study.answers), "bt500"))
    md, tex, csv = to_markdown(t), to_latex(t), to_csv(t)
    first = t.cells.iloc[0]
    shown = f"{first['mos']:.2f} ± {first['half_width']:.2f}"
    assert md.splitlines()[0] == "| Scenes | vehicle | street | indoor | mountainous |"
    assert shown in md
    assert shown.replace("±", r"$\pm$") in tex and r"\begin{tabular}{lcccc}" in tex
    back = pd.read_csv(__import__("io").StringIO(csv))
    assert len(back) == 16 and set(back.columns) >= {"scale", "scene", "mos", "sd", "n", "ci_low", "ci_high"}
    assert to_rich(t).row_count == 4


def test_single_participant_table_has_undefined_cis_and_says_so():
    one = simulate_study(n_participants=1, stimuli_per_scene=2, pose_rate_hz=0, seed=1)
    t = table1(screen(prepare_answers(one.answers), "none"))
    assert t.cells["half_width"].isna().all()
    assert any("single participant" in note for note in t.notes)
    assert "CI n/a" in to_markdown(t)
