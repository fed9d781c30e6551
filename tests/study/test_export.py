"""Long-format export: the contract's columns and dtypes, CSV/Parquet round trip, SSQ and poses."""

from __future__ import annotations

import pandas as pd
import pytest
from _studykit import make_study

from study.driver import RaterModel, ReplayAnswers, ScriptedDriver
from study.engine import SessionEngine
from study.errors import PanostudyError, SessionError
from study.export import ANSWER_COLUMNS, export_answers, load_answers, load_poses, load_ssq, read_answers


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two participants who completed the tiny protocol with the seeded rater model."""
    folder = tmp_path_factory.mktemp("export")
    db = make_study(folder)
    for code in ("P01", "P02"):
        ScriptedDriver(RaterModel(5), motion_seed=2).run(SessionEngine.start(db, code))
    db.close()
    return folder / "study.sqlite"


def test_answers_have_the_contract_columns_and_one_row_per_answer(finished):
    answers = load_answers(finished)
    assert list(answers.columns) == list(ANSWER_COLUMNS)
    assert {c: str(t) for c, t in answers.dtypes.items()} == ANSWER_COLUMNS
    # 5 trials (1 training) x 3 items x 2 participants
    assert len(answers) == 30
    assert answers.groupby("participant").size().to_dict() == {"P01": 15, "P02": 15}
    assert answers["training"].sum() == 6 and set(answers.loc[answers["training"], "trial_index"]) == {0}
    assert answers["value"].between(answers["scale_min"], answers["scale_max"]).all()
    assert (answers["answered_at"] >= answers["shown_at"]).all()
    assert str(answers["shown_at"].dt.tz) == "UTC"
    assert not answers.duplicated(["session", "trial_index", "scale", "item"]).any()
    assert set(answers["scene"]) == {"street", "indoor"} | {"training"}
    assert answers["protocol_hash"].str.len().eq(64).all() and (answers["study"] == "tiny").all()


def test_csv_and_parquet_round_trip_to_the_same_frame(finished, tmp_path):
    answers = load_answers(finished)
    csv = export_answers(finished, tmp_path / "answers.csv")
    parquet = export_answers(finished, tmp_path / "answers.parquet")
    pd.testing.assert_frame_equal(read_answers(csv), answers)
    pd.testing.assert_frame_equal(read_answers(parquet), answers)
    with pytest.raises(PanostudyError, match="unknown export format '.xlsx'"):
        export_answers(finished, tmp_path / "answers.xlsx")
    assert not (tmp_path / "answers.xlsx").exists()


def test_ssq_and_poses(finished):
    ssq = load_ssq(finished)
    assert list(ssq.columns) == ["participant", "session", "session_number", "station", "phase", "item", "value"]
    assert len(ssq) == 2 * 2 * 16 and ssq["value"].between(0, 3).all()
    assert sorted(ssq.query("participant == 'P01' and phase == 'post'")["item"]) == list(range(1, 17))
    poses = load_poses(finished)
    # 5 s exposure at 10 Hz: 50 samples per trial, t since the stimulus appeared
    assert poses.groupby(["participant", "trial_index"]).size().eq(50).all()
    assert poses["t"].between(0, 5).all() and poses["yaw_deg"].between(-180, 180).all()
    assert poses["pitch_deg"].between(-90, 90).all()


def test_simulated_raters_recover_scene_quality(tmp_path):
    """The rater model's per-scene true quality shows through in the exported means."""
    db = make_study(tmp_path, participants=[f"P{i:02d}" for i in range(6)])
    model = RaterModel(7, scene_quality={"street": {"ACR": 4.5, "VAR": 4.5}, "indoor": {"ACR": 1.8, "VAR": 1.8}},
                       bias_sd=0.2, inconsistency=(0.2, 0.4))
    for number in range(6):
        ScriptedDriver(model).run(SessionEngine.start(db, f"P{number:02d}"))
    answers = load_answers(db).query("not training")
    db.close()
    means = answers.groupby("scene")["value"].mean()
    assert means["street"] > 4.0 and means["indoor"] < 2.5


def test_a_session_replays_an_answer_file(tmp_path):
    db = make_study(tmp_path)
    ScriptedDriver(RaterModel(0)).run(SessionEngine.start(db, "P01"))
    first = load_answers(db)
    ssq = load_ssq(db)
    # P02 answers every key with the mirror image of P01's answer, read from a CSV file.
    wanted = {f"trial/{r.trial_index}/{r.scale}/{r.item}": 6 - r.value for r in first.itertuples()}
    wanted |= {f"ssq/{r.phase}/{r.item}": 3 - r.value for r in ssq.itertuples()}
    lines = ["key,value,response_time_s", *(f"{k},{v},2.5" for k, v in wanted.items())]
    (tmp_path / "answers.csv").write_text("\n".join(lines))
    ScriptedDriver(ReplayAnswers.from_file(tmp_path / "answers.csv")).run(SessionEngine.start(db, "P02"))
    second = load_answers(db).query("participant == 'P02'")
    db.close()
    got = {f"trial/{r.trial_index}/{r.scale}/{r.item}": r.value for r in second.itertuples()}
    assert got == {k: v for k, v in wanted.items() if k.startswith("trial/")}
    assert (second["response_time_s"] == 2.5).all()


def test_answer_files_are_checked(tmp_path):
    (tmp_path / "bad.json").write_text('[{"key": "ssq/pre/1", "value": "high"}]')
    with pytest.raises(SessionError, match=r"bad.json: row 1 \(ssq/pre/1\): value 'high' is not an integer"):
        ReplayAnswers.from_file(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text('{"instructions": 1}')
    db = make_study(tmp_path, participants=("P01",))
    engine = SessionEngine.start(db, "P01")
    with pytest.raises(SessionError, match=r"short.json: no answer for step 'ssq/pre/1'"):
        ScriptedDriver(ReplayAnswers.from_file(tmp_path / "short.json")).run(engine)
    assert engine.current().key == "ssq/pre/1"
    db.close()
