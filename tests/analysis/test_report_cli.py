import base64
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis import report as report_module
from analysis.figures import NO_POSE_NOTE, heatmap_figure
from analysis.report import analyze, write_report
from analysis.sample import exclusions_summary
from panostudy.cli import app


@pytest.fixture(scope="module")
def written(small_study, tmp_path_factory):
    """One full analysis and report of the small study, with the progress steps it reported."""
    steps = []
    result = analyze(small_study.answers, ssq=small_study.ssq, poses=small_study.poses, screening="bt500",
                     progress=steps.append)
    files = write_report(result, tmp_path_factory.mktemp("r") / "report", progress=steps.append)
    return result, files, steps


def test_report_is_self_contained_html_with_embedded_images(written):
    result, files, _ = written
    page = files["report.html"].read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6  # MOS, bias, distributions, SOS, SSQ, heat maps
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<link" not in page and "<script" not in page  # nothing fetched from elsewhere
    assert "pooled all items of all scales" in page and "Wilcoxon signed-rank" in page and "ICC(2,k)" in page
    for name in ("table1.csv", "table1.md", "table1.tex", "mixed_contrasts.csv", "reliability.csv", "ssq_test.csv",
                 "figures/heatmaps.png", "figures/sos.png", "datasheet.md", "sos.csv", "sensitivity.csv", "exclusions.csv"):
        assert name in files and files[name].is_file()
    table = pd.read_csv(files["table1.csv"])
    assert table.set_index(["scale", "scene"])["mos"].to_dict() == pytest.approx(
        result.table1.cells.set_index(["scale", "scene"])["mos"].to_dict())


def test_progress_reports_every_step(written):
    assert tuple(written[2]) == report_module.ANALYSIS_STEPS + report_module.REPORT_STEPS


def test_no_pose_data_gives_a_note():
    fig = heatmap_figure(pd.DataFrame(columns=["scene", "yaw_deg", "pitch_deg"]))
    assert [t.get_text() for t in fig.texts] == [NO_POSE_NOTE]


def test_failed_report_leaves_previous_report_untouched(written, tmp_path, monkeypatch):
    result = written[0]
    # Figures are not what this test is about; a stand-in keeps it fast.
    monkeypatch.setattr(report_module, "_figures", lambda analysis, thumbnails, images=None: dict.fromkeys(
        ("mos", "distributions", "bias", "heatmaps", "ssq", "sos"), b"\x89PNG\r\n\x1a\n"))
    out = tmp_path / "report"
    write_report(result, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "render_html", broken)
    with pytest.raises(RuntimeError):
        write_report(result, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left behind


def test_out_folder_that_is_not_a_report_is_refused(written, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    from study.errors import AnalysisError

    with pytest.raises(AnalysisError, match="not an earlier panostudy report folder"):
        write_report(written[0], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_analyze_on_csv_and_parquet_exports(small_study, tmp_path):
    answers, ssq, poses = tmp_path / "answers.parquet", tmp_path / "ssq.csv", tmp_path / "poses.csv"
    small_study.answers.to_parquet(answers)
    small_study.ssq.to_csv(ssq, index=False)
    small_study.poses.iloc[:0].to_csv(poses, index=False)  # a study that recorded no poses
    out = tmp_path / "report"
    args = ["analyze", "--answers", str(answers), "--ssq", str(ssq), "--poses", str(poses), "--out", str(out),
            "--screening", "p913", "--study", "simulated"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "mountainous" in result.output and "report.html" in result.output
    assert "screening: p913" in result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "no pose data" in page
    assert pd.read_csv(out / "table1.csv")["screening"].eq("p913").all()


def test_cli_analyze_on_a_csv_answers_export_parses_its_times(small_study, tmp_path):
    """A CSV holds times as text; session durations need them as times (a CSV export once crashed analyze)."""
    answers = tmp_path / "answers.csv"
    small_study.answers.to_csv(answers, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["analyze", "--answers", str(answers), "--out", str(out), "--study", "simulated"])
    assert result.exit_code == 0, result.output
    assert "first rating shown to last rating confirmed" in (out / "report.html").read_text(encoding="utf-8")
    broken = small_study.answers.astype({"shown_at": str})
    broken.loc[broken.index[3], "shown_at"] = "yesterday"
    bad = tmp_path / "bad.csv"
    broken.to_csv(bad, index=False)
    result = CliRunner().invoke(app, ["analyze", "--answers", str(bad), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2
    assert "column 'shown_at' holds 'yesterday' at line 5" in result.output


def _write(frame, path):
    frame.to_csv(path, index=False)
    return str(path)


def test_cli_bad_inputs_exit_2_with_one_line(small_study, tmp_path):
    answers = small_study.answers
    bad_value = answers.copy()
    bad_value.loc[bad_value.index[~bad_value["training"]][0], "value"] = 0
    cases = {
        "no answers": ["--answers", _write(answers.iloc[:0], tmp_path / "empty.csv")],
        "only training": ["--answers", _write(answers[answers["training"]], tmp_path / "train.csv")],
        "outside their scale's range": ["--answers", _write(bad_value, tmp_path / "range.csv")],
        "no such file": ["--answers", str(tmp_path / "missing.csv")],
        "no answers of that study": ["--answers", _write(answers, tmp_path / "all.csv"), "--study", "other"],
        "no such database file": ["--db", str(tmp_path / "missing.sqlite")],
        "exactly one of --db": [],
        "no datapackage.json there": ["--export", str(tmp_path)],
        "--exclude-flagged needs the flagged trials": ["--answers", _write(answers, tmp_path / "all.csv"), "--exclude-flagged"],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(app, ["analyze", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (message, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (message, result.output)
    assert not (tmp_path / "out").exists()


def test_cli_empty_study_database_exits_2(tmp_path):
    db = tmp_path / "study.sqlite"
    assert CliRunner().invoke(app, ["study", "init", "--db", str(db)]).exit_code == 0
    result = CliRunner().invoke(app, ["analyze", "--db", str(db), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: the study has no answers (empty database or export); run sessions first, then analyse"]
    assert not (tmp_path / "out").exists()


def test_report_reads_as_a_reviewer_expects(written):
    result, files, _ = written
    page = files["report.html"].read_text(encoding="utf-8")
    # A simulated study says so on every page (a fixed banner repeats on printed pages), in the tables and figures.
    assert "class='banner'" in page and "SIMULATED RATINGS" in page and ".banner{position:fixed" in page
    assert "SIMULATED RATINGS" in files["table1.md"].read_text() and "SIMULATED RATINGS" in files["table1.tex"].read_text()
    # Table 1: scales down, scenes across, no empty column; t and BCa intervals.
    assert "<th>Scale \\ Scene</th><th>vehicle</th>" in page and "BCa [" in page
    # p values below 0.001 are written as such, never as 0.000.
    contrasts = page[page.index("Scene effect per scale"):page.index("Rating diversity")]
    assert "&lt; 0.001" in contrasts and ">0.000<" not in contrasts
    # The SSQ test is described once, above its table.
    assert page.count("Wilcoxon signed-rank") == 1
    assert "panostudy 0." in page or "panostudy unknown" in page
    sheet = files["datasheet.md"].read_text()
    for heading in ("## 1. Motivation", "## 2. Stimuli and their provenance", "## 3. Participants",
                    "## 4. Test environment and equipment", "## 5. Procedure (protocol)",
                    "## 6. Processing: screening and exclusions", "## 8. Distribution and licence", "## 9. Known limitations"):
        assert heading in sheet
    assert "SIMULATED RATINGS" in sheet


def test_one_stimulus_per_scene_says_what_the_inference_is_about(tmp_path):
    from analysis.mixed import CONFOUNDED_NOTE
    from analysis.simulate import simulate_study

    study = simulate_study(n_participants=8, stimuli_per_scene=1, pose_rate_hz=0, seed=3)
    result = analyze(study.answers, screening="none")
    assert all(e.design_note == CONFOUNDED_NOTE for e in result.scene_effects)
    page = report_module.render_html(result, dict.fromkeys(("mos", "distributions", "bias", "heatmaps", "sos"), b"x"))
    assert "What this inference is about." in page and "not about the scenes in general" in page


def test_context_gives_demographics_exclusions_and_the_appendix(small_study):
    from study.protocol import DEFAULT_PROTOCOL, load_protocol

    protocol = load_protocol(DEFAULT_PROTOCOL)
    codes = [f"P{i:03d}" for i in range(1, 11)]
    participants = pd.DataFrame({"participant": codes, "age": [21, 25, 30, 35, 40, None, 22, 28, 33, 45],
                                 "gender": ["f", "m"] * 5, "vision_correction": ["none"] * 6 + ["glasses"] * 4})
    sessions = pd.DataFrame({"participant": codes, "session": range(1, 11),
                             "status": ["completed"] * 9 + ["withdrawn"], "duration_min": [25.0] * 9 + [12.0],
                             "withdraw_reason": [None] * 9 + ["nausea"], "withdrawn_at_step": [None] * 9 + ["trial/5/ACR/overall"]})
    flagged = pd.DataFrame({"participant": ["P002", "P003"], "session_number": [1, 1], "station": ["lab-1", "lab-2"],
                            "trial_index": [3, 4], "flag": ["pose-rate-low", "interrupted"],
                            "detail": ["12 Hz of 30", "stimulus interrupted by a pause"]})
    context = report_module.StudyContext(protocol=protocol, participants=participants, sessions=sessions,
                                         flagged_trials=flagged)
    kept = analyze(small_study.answers, screening="none", context=context)
    demo = kept.demographics.set_index("measure")["value"]
    assert demo["age (years)"].startswith("mean 31.0, SD 8.1, range 21–45 (given by 9 of 10)")
    assert demo["gender"] == "f 5, m 5" and demo["vision correction"] == "none 6, glasses 4"
    assert "10 sessions: mean 23.7 min" in kept.durations.attrs["summary"]
    what = kept.exclusions.set_index("participant")
    assert what.loc["P010", "what"] == "withdrawn session" and "nausea at step trial/5/ACR/overall" in what.loc["P010", "detail"]
    assert what.loc["P002", "what"] == "flagged trial: pose-rate-low" and what.loc["P002", "effect"] == "kept (flagged only)"
    dropped = analyze(small_study.answers, screening="none", context=context, exclude_flagged=True)
    answers_in_flagged = ((kept.answers["participant"].isin(["P002"]) & (kept.answers["trial_index"] == 3))
                          | (kept.answers["participant"].isin(["P003"]) & (kept.answers["trial_index"] == 4))).sum()
    assert answers_in_flagged == 18 and len(dropped.answers) == len(kept.answers) - answers_in_flagged
    assert (dropped.exclusions["effect"] == "answers removed").sum() == 2
    page = report_module.render_html(kept, dict.fromkeys(("mos", "distributions", "bias", "heatmaps", "sos"), b"x"))
    assert f"SHA-256 <code>{protocol.sha256}</code>" in page and "dong2025" in page
    counted = re.search(r"<p>2 flagged trials \(([^)]*)\): their answers are analysed; --exclude-flagged leaves them out", page)
    assert counted and sorted(counted.group(1).split(", ")) == ["interrupted 1", "pose-rate-low 1"]
    assert "their answers were left out (--exclude-flagged)" in report_module.render_html(
        dropped, dict.fromkeys(("mos", "distributions", "bias", "heatmaps", "sos"), b"x"))
    declined = sessions.assign(status=["completed"] * 9 + ["declined"])
    rows = exclusions_summary(kept.screening, declined, None).set_index("participant")
    assert rows.loc["P010", "what"] == "consent declined" and rows.loc["P010", "effect"] == "nothing recorded but the decision"
    for scale in protocol.scales:
        for item in scale.items:
            assert item.question in page
