"""The whole analysis in one call, and its self-contained HTML report plus CSV/Markdown/LaTeX tables."""

from __future__ import annotations

import base64
import dataclasses
import html
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.mixed import SceneEffect, scene_effect
from analysis.mos import all_summaries
from analysis.reliability import reliability
from analysis.screening import METHODS, ScreeningResult, screen
from analysis.ssq import ssq_pre_post, ssq_scores
from analysis.table1 import Table1, table1, to_csv, to_latex, to_markdown
from analysis.validate import prepare_answers, prepare_poses
from study.errors import AnalysisError

ANALYSIS_STEPS = ("validate answers", "screening", "Table 1", "robustness", "mixed models", "reliability", "SSQ")
REPORT_STEPS = ("figures", "tables", "HTML")
REPORT_MARKER = "report.html"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows.

    Attributes
    ----------
    answers : pandas.DataFrame
        Validated test answers (training excluded), before screening.
    screening : ScreeningResult
        The chosen screening; ``table1`` uses it.
    table1 : Table1
    robustness : dict str -> Table1
        Table 1 under every screening method, for comparison.
    summaries : dict str -> pandas.DataFrame
        MOS/SD/N/CI per scale, scene, item, stimulus and presentation (screened answers).
    scene_effects : tuple of SceneEffect
        The mixed model of every scale.
    reliability : pandas.DataFrame
        ICC(2,k) and Krippendorff's α per scale (raw scores of the kept participants).
    ssq_scores, ssq_test : pandas.DataFrame or None
        Weighted SSQ scores and the pre/post test; None when there are no SSQ answers.
    poses : pandas.DataFrame
        Head-pose samples (possibly empty).
    flags : pandas.DataFrame or None
        Flagged trials (``study.export.load_flagged_trials``); None when the input had none to give.
    """

    answers: pd.DataFrame
    screening: ScreeningResult
    table1: Table1
    robustness: dict[str, Table1]
    summaries: dict[str, pd.DataFrame]
    scene_effects: tuple[SceneEffect, ...]
    reliability: pd.DataFrame
    ssq_scores: pd.DataFrame | None
    ssq_test: pd.DataFrame | None
    poses: pd.DataFrame
    flags: pd.DataFrame | None = None


def _step(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress(name)


def analyze(answers: pd.DataFrame, *, ssq: pd.DataFrame | None = None, poses: pd.DataFrame | None = None,
            screening: str = "bt500", progress: Progress | None = None, flags: pd.DataFrame | None = None) -> Analysis:
    """Runs every analysis of the study.

    Parameters
    ----------
    answers : pandas.DataFrame
        Long-format answers (training rows are dropped here).
    ssq, poses : pandas.DataFrame, optional
        SSQ answers and head-pose samples in the long formats of ``study.export``.
    flags : pandas.DataFrame, optional
        Flagged trials (``study.export.load_flagged_trials``), counted in the report.
    screening : {"none", "bt500", "p913", "mle"}
        Observer screening applied before Table 1, the summaries and the mixed models.
    progress : callable, optional
        Called with each step's name (:data:`ANALYSIS_STEPS`) before it runs.

    Raises
    ------
    AnalysisError
        Bad input (see :func:`analysis.validate.prepare_answers`) or an unknown screening method.
    """
    if screening not in METHODS:
        raise AnalysisError(f"--screening {screening!r} is unknown; choose one of {', '.join(METHODS)}")
    _step(progress, "validate answers")
    test = prepare_answers(answers)
    pose_frame = prepare_poses(poses)
    single = test["participant"].nunique() < 2
    _step(progress, "screening")
    # Every method except 'none' needs a panel to compare an observer with; with one participant say so.
    screened = screen(test, "none" if single else screening)
    if single and screening != "none":
        screened = dataclasses.replace(screened, notes=screened.notes + (
            f"--screening {screening} skipped: screening compares observers and there is a single participant",))
    _step(progress, "Table 1")
    main = table1(screened)
    _step(progress, "robustness")
    robustness = {m: (main if m == screened.method else table1(screen(test, m))) for m in ((METHODS[0],) if single else METHODS)}
    _step(progress, "mixed models")
    effects = tuple(scene_effect(screened.answers, s) for s in main.scales) if not single else ()
    _step(progress, "reliability")
    kept = test[~test["participant"].astype("string").isin(screened.rejected)]
    rel = reliability(kept)
    _step(progress, "SSQ")
    scores = test_frame = None
    if ssq is not None and len(ssq):
        scores = ssq_scores(ssq)
        test_frame = ssq_pre_post(scores)
    return Analysis(test, screened, main, robustness, all_summaries(screened.answers), effects, rel, scores,
                    test_frame, pose_frame, flags)


def stimulus_thumbnails(answers: pd.DataFrame, *, root: Path | None = None, width: int = 256) -> dict[str, np.ndarray]:
    """A small equirect thumbnail of the first readable stimulus of every scene (for the heat maps).

    Stimulus paths are read as given, or relative to ``root``; scenes whose images are not found get none.
    """
    from PIL import Image

    thumbs = {}
    for scene, rows in answers.groupby("scene", observed=True, sort=False):
        for name in rows["stimulus"].astype("string").unique():
            path = Path(str(name))
            if not path.is_absolute() and root is not None:
                path = root / path
            if path.is_file():
                try:
                    with Image.open(path) as image:
                        thumbs[str(scene)] = np.asarray(image.convert("RGB").resize((width, width // 2)))
                    break
                except OSError:
                    continue
    return thumbs


def _frame_html(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.{digits}f}", na_rep="n/a", border=0,
                         classes="data", escape=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.data{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.data th,table.data td{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
table.data th{background:#f4f4f4}img{max-width:100%}.note{color:#555;font-size:.9em}
"""


def render_html(analysis: Analysis, figures: Mapping[str, bytes], *, title: str = "panostudy analysis") -> str:
    """The report page: tables inline, figures embedded as base64 PNG, nothing external."""
    a = analysis
    t = a.table1
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{e(title)}</h1>")
    n_part = a.answers["participant"].nunique()
    parts.append(
        f"<p class='note'>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. {len(a.answers)} test answers "
        f"(training excluded) from {n_part} participants, {a.answers['stimulus'].nunique()} stimuli, "
        f"{a.answers['scene'].nunique()} scenes, {a.answers['scale'].nunique()} scales.</p>"
    )
    if a.flags is not None:
        counts = a.flags.groupby("flag").size()
        listed = ", ".join(f"{e(str(flag))} {n}" for flag, n in counts.items()) or "none"
        parts.append(f"<p class='note'>Flagged trials: {len(a.flags)} ({listed}); their answers are kept in the "
                     "analysis. List them with 'panostudy study export --flags'.</p>")
    parts.append("<h2>Table 1</h2>")
    parts.append(f"<p>Mean score per scale (rows) and scene (columns), mean ± CI half-width. {e(t.ci_method)}.</p>")
    wide = t.wide("mos").astype(object)
    for scene in t.scenes:
        for scale in t.scales:
            row = t.cells[(t.cells["scale"] == scale) & (t.cells["scene"] == scene)].iloc[0]
            hw = "n/a" if np.isnan(row["half_width"]) else f"{row['half_width']:.2f}"
            wide.loc[scale, scene] = f"{row['mos']:.2f} ± {hw} (N={int(row['n'])})"
    parts.append(wide.rename_axis("Scenes", axis=1).reset_index().to_html(index=False, border=0, classes="data"))
    parts.append(_img(figures["mos"], "Table 1 means with confidence intervals"))
    parts.append("<h2>Observer screening</h2><ul>")
    parts += [f"<li>{e(n)}</li>" for n in a.screening.notes]
    parts.append("</ul>")
    parts.append(_frame_html(a.screening.participants))
    parts.append("<p>Per-participant bias: how much more lenient (positive) or harsher (negative) each participant "
                 "rated than the panel.</p>")
    parts.append(_img(figures["bias"], "per-participant bias"))
    parts.append("<h3>Robustness: Table 1 under every screening method</h3>")
    comp = pd.concat({m: tab.cells.set_index(["scale", "scene"])["mos"] for m, tab in a.robustness.items()}, axis=1)
    parts.append(comp.reset_index().to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="data"))
    parts.append("<h2>Rating distributions</h2>")
    parts.append(_img(figures["distributions"], "rating distributions"))
    parts.append("<h2>Scene effect per scale (linear mixed model)</h2>")
    parts.append("<p>value ~ scene + (1|participant) + (1|stimulus), REML (statsmodels MixedLM, crossed random "
                 "effects as variance components). Pairwise scene differences with Wald z tests, Holm-adjusted p "
                 "values, and d = difference / total SD (Westfall, Kenny &amp; Judd 2014).</p>")
    if not a.scene_effects:
        parts.append("<p class='note'>Not fitted: a single participant.</p>")
    for effect in a.scene_effects:
        var = ", ".join(f"{k} {v:.3f}" for k, v in effect.variances.items())
        parts.append(f"<h3>{e(effect.scale)}</h3><p class='note'>N answers = {effect.n}; variances: {e(var)}; "
                     f"converged: {effect.converged}{'; ' + e('; '.join(effect.notes)) if effect.notes else ''}</p>")
        parts.append(_frame_html(effect.contrasts))
    parts.append("<h2>Reliability</h2><p>ICC(2,k): two-way random effects, average measures, absolute agreement "
                 "(pingouin); Krippendorff's α with ordinal distances. Targets are presentations (stimulus × item).</p>")
    parts.append(_frame_html(a.reliability))
    parts.append("<h2>Simulator sickness (SSQ)</h2>")
    if a.ssq_test is None:
        parts.append("<p class='note'>No SSQ answers in this study.</p>")
    else:
        parts.append("<p>Kennedy et al. (1993) weights: Nausea ×9.54, Oculomotor ×7.58, Disorientation ×13.92, "
                     "Total = (N+O+D) ×3.74. Pre vs. post: Wilcoxon signed-rank test (two-sided, paired).</p>")
        parts.append(_frame_html(a.ssq_test))
        parts.append(_img(figures["ssq"], "SSQ before and after"))
    parts.append("<h2>Head motion</h2>")
    if len(a.poses) == 0:
        from analysis.figures import NO_POSE_NOTE

        parts.append(f"<p class='note'>{e(NO_POSE_NOTE)}.</p>")
    else:
        parts.append(f"<p>Where participants looked: viewing-direction density of {len(a.poses)} head-pose samples "
                     "per scene over a thumbnail of one of its stimuli (yaw 0° = image centre).</p>")
    parts.append(_img(figures["heatmaps"], "head-motion heat maps"))
    parts.append("<h2>MOS per scene and item</h2>")
    parts.append(_frame_html(a.summaries["item"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures(analysis: Analysis, thumbnails: Mapping[str, np.ndarray] | None) -> dict[str, bytes]:
    from analysis.figures import bias_figure, distribution_figure, figure_png, heatmap_figure, mos_figure, ssq_figure

    figs = {
        "mos": mos_figure(analysis.table1),
        "distributions": distribution_figure(analysis.answers),
        "bias": bias_figure(analysis.screening, analysis.answers),
        "heatmaps": heatmap_figure(analysis.poses, thumbnails),
    }
    if analysis.ssq_scores is not None:
        figs["ssq"] = ssq_figure(analysis.ssq_scores)
    return {name: figure_png(fig) for name, fig in figs.items()}


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_MARKER).is_file())):
        raise AnalysisError(
            f"--out {out}: exists and is not an earlier panostudy report folder; choose a new or empty folder"
        )
    if not out.parent.is_dir():
        raise AnalysisError(f"--out {out}: parent folder {out.parent} does not exist; create it first")


def write_report(analysis: Analysis, out: str | Path, *, thumbnails: Mapping[str, np.ndarray] | None = None,
                 progress: Progress | None = None) -> dict[str, Path]:
    """Writes ``report.html``, Table 1 as CSV/Markdown/LaTeX, the other tables as CSV and the figures as PNG.

    Everything is written into a temporary folder next to ``out`` and moved into place at the end, so a
    failed run leaves either the previous report or none, never half of one. An existing ``out`` is only
    replaced if it is empty or an earlier report (it holds ``report.html``).

    Returns
    -------
    dict str -> pathlib.Path
        Name of each written file to its final path.
    """
    out = Path(out).resolve()
    _check_out(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the report is an ordinary folder
        _step(progress, "figures")
        figures = _figures(analysis, thumbnails)
        (tmp / "figures").mkdir()
        for name, png in figures.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        _step(progress, "tables")
        t = analysis.table1
        files = {"table1.csv": to_csv(t), "table1.md": to_markdown(t), "table1.tex": to_latex(t)}
        tables = {
            "screening_participants.csv": analysis.screening.participants,
            "reliability.csv": analysis.reliability,
            **{f"mos_per_{k}.csv": v for k, v in analysis.summaries.items()},
        }
        if len(analysis.screening.presentations):
            tables["screening_presentations.csv"] = analysis.screening.presentations
        if analysis.scene_effects:
            tables["mixed_contrasts.csv"] = pd.concat(
                [e.contrasts.assign(scale=e.scale) for e in analysis.scene_effects], ignore_index=True)
        if analysis.ssq_scores is not None:
            tables["ssq_scores.csv"] = analysis.ssq_scores
            tables["ssq_test.csv"] = analysis.ssq_test
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, frame in tables.items():
            frame.to_csv(tmp / name, index=False)
        _step(progress, "HTML")
        (tmp / REPORT_MARKER).write_text(render_html(analysis, figures), encoding="utf-8")
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {str(p): out / p for p in written}
