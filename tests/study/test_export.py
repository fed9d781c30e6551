"""Long-format export: the contract's columns and dtypes, CSV/Parquet round trip, SSQ and poses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _studykit import make_study

from study.driver import RaterModel, ReplayAnswers, ScriptedDriver
from study.engine import SessionEngine
from study.errors import PanostudyError, SessionError
from study.export import (
    ANSWER_COLUMNS, CODEBOOK, SMALL_TABLES, TABLES, export_answers, export_study, load_answers, load_flagged_trials,
    load_participants, load_poses, load_sessions, load_ssq, load_stimuli, read_answers, read_table,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def finished(request, tmp_path_factory):
    """Two participants who completed the tiny protocol with the seeded rater model, on each store."""
    folder = tmp_path_factory.mktemp("export")
    target = folder / "study.sqlite"
    if request.param == "postgresql":
        target = request.getfixturevalue("postgres_server").create_database()
    db = make_study(folder, db=target)
    for code in ("P01", "P02"):
        ScriptedDriver(RaterModel(5), motion_seed=2).run(SessionEngine.start(db, code))
    db.close()
    return target


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
    with pytest.raises(PanostudyError, match="unknown export format '.json'"):
        export_answers(finished, tmp_path / "answers.json")
    assert not (tmp_path / "answers.json").exists()
    # A missing output folder is created.
    nested = export_answers(finished, tmp_path / "new" / "deeper" / "answers.csv")
    pd.testing.assert_frame_equal(read_answers(nested), answers)


def test_ssq_and_poses(finished):
    ssq = load_ssq(finished)
    assert list(ssq.columns) == ["participant", "session", "session_number", "station", "phase", "item", "item_name",
                            "value"]
    names = dict(zip(ssq["item"], ssq["item_name"]))
    assert names[1] == "General discomfort" and names[14] == "Vertigo" and len(names) == 16
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


# --- the export package ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(finished, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "new" / "export"  # parents are created
    files = export_study(finished, out, parquet=True, spss=True, xlsx=True)
    return out, files


def test_every_column_of_every_export_has_a_codebook_entry(package):
    """A column added to an export without documenting it in CODEBOOK fails here."""
    out, files = package
    descriptor = json.loads((out / "datapackage.json").read_text())
    described = {r["name"]: [f["name"] for f in r["schema"]["fields"]] for r in descriptor["resources"]}
    codebook = (out / "codebook.md").read_text()
    for table in TABLES:
        header = list(pd.read_csv(out / f"{table}.csv", nrows=0).columns)
        assert header == list(TABLES[table]), table
        assert set(header) <= set(CODEBOOK[table]), (table, set(header) - set(CODEBOOK[table]))
        assert described[table] == header
        assert all(f"| {column} |" in codebook for column in header)
        assert list(pd.read_parquet(out / f"{table}.parquet").columns) == header
    for sav in SMALL_TABLES:
        import pyreadstat

        _, meta = pyreadstat.read_sav(str(out / f"{sav}.sav"), metadataonly=True)
        assert set(meta.column_names) <= set(CODEBOOK[sav])
        assert all(label for label in meta.column_labels)


def test_tables_load_back_with_their_types(finished, package):
    out, _ = package
    root = json.loads((out / "datapackage.json").read_text())["panostudy:stimulus_root"]
    pd.testing.assert_frame_equal(read_table(out / "answers.csv", "answers"), load_answers(finished, stimulus_root=root))
    pd.testing.assert_frame_equal(read_table(out / "participants.csv", "participants"), load_participants(finished))
    pd.testing.assert_frame_equal(read_table(out / "sessions.csv", "sessions"), load_sessions(finished))
    pd.testing.assert_frame_equal(read_table(out / "stimuli.csv", "stimuli"), load_stimuli(finished, stimulus_root=root))
    pd.testing.assert_frame_equal(read_table(out / "ssq.csv", "ssq"), load_ssq(finished))
    pd.testing.assert_frame_equal(read_table(out / "poses.csv", "poses"),
                                  load_poses(finished, stimulus_root=root, interrupted=True))
    pd.testing.assert_frame_equal(read_table(out / "flagged_trials.csv", "flagged_trials"), load_flagged_trials(finished))
    sessions = load_sessions(finished)
    assert (sessions["status"] == "completed").all() and (sessions["duration_min"] > 0).all()
    assert (sessions["backend"].isna()).all()  # the scripted driver rendered nothing
    sheets = pd.read_excel(out / "export.xlsx", sheet_name=None)
    assert set(sheets) == {*SMALL_TABLES, "codebook"}
    assert len(sheets["answers"]) == len(load_answers(finished)) and sheets["answers"]["value"].dtype == "int64"


def test_stimuli_are_relative_to_the_root_with_their_hashes(finished, package):
    from study.stimuli import file_sha256

    out, _ = package
    root = Path(json.loads((out / "datapackage.json").read_text())["panostudy:stimulus_root"])
    stimuli = read_table(out / "stimuli.csv", "stimuli")
    answers = read_table(out / "answers.csv", "answers")
    assert not any(Path(p).is_absolute() for p in stimuli["stimulus"])
    for path, sha in zip(stimuli["stimulus"], stimuli["sha256"]):
        assert file_sha256(root / path) == sha
    assert set(answers["stimulus"]) <= set(stimuli["stimulus"])
    assert stimuli["training"].sum() == 1 and not stimuli["placeholder"].any()


def test_spss_files_carry_the_protocols_wording(package):
    import pyreadstat

    out, _ = package
    ssq, meta = pyreadstat.read_sav(str(out / "ssq.sav"))
    assert meta.variable_value_labels["value"] == {0: "None", 1: "Slight", 2: "Moderate", 3: "Severe"}
    assert meta.variable_value_labels["item"][14] == "Vertigo"
    assert ssq["value"].between(0, 3).all()
    wide, meta = pyreadstat.read_sav(str(out / "ratings_wide.sav"))
    assert {"ACR_overall", "VAR_clarity", "VAR_detail"} <= set(wide.columns)
    labels = dict(zip(meta.column_names, meta.column_labels))
    assert labels["ACR_overall"] == "ACR: Overall quality?"
    assert meta.variable_value_labels["ACR_overall"] == {1: "Bad", 2: "Poor", 3: "Fair", 4: "Good", 5: "Excellent"}
    assert meta.variable_value_labels["VAR_clarity"] == {1: "Very blurry", 5: "Very clear"}
    assert len(wide) == 2 * 4  # 2 participants x 4 test trials, one row each
    answers, _ = pyreadstat.read_sav(str(out / "answers.sav"))
    assert answers["value"].dtype == "float64" and set(answers["training"]) == {0, 1}


def test_datapackage_validates_with_frictionless(package):
    frictionless = pytest.importorskip("frictionless")
    out, _ = package
    report = frictionless.validate(str(out / "datapackage.json"))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])[:5]


def test_export_folder_rules(finished, package, tmp_path):
    out, _ = package
    before = sorted(p.name for p in out.iterdir())
    export_study(finished, out)  # an earlier export is replaced as a whole
    assert "answers.sav" not in {p.name for p in out.iterdir()} and "answers.sav" in before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PanostudyError, match="not an earlier panostudy export"):
        export_study(finished, tmp_path / "mine")
    with pytest.raises(PanostudyError, match="a package is a folder"):
        export_study(finished, tmp_path / "x.csv")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
