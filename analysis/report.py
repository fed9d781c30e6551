"""The whole analysis in one call, and its self-contained HTML report plus CSV/Markdown/LaTeX tables and datasheet.

The page is built from one small function per section (:data:`SECTIONS`), each taking the :class:`Analysis`
and the rendered figures and returning HTML; a new section is a new function in that tuple.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.gaze_summary import NO_GAZE_NOTE, GazeAnalysis, gaze_analysis
from analysis.mixed import SceneEffect, scene_effect
from analysis.mos import all_summaries
from analysis.power import smallest_detectable_difference
from analysis.reliability import reliability
from analysis.sample import demographics, exclusions_summary, flagged_answer_mask, session_durations
from analysis.screening import METHODS, ScreeningResult, screen
from analysis.sos import sos_hypothesis, sos_points
from analysis.ssq import ssq_pre_post, ssq_scores
from analysis.table1 import OUTSIDE_NOTE, Table1, table1, to_csv, to_latex, to_markdown
from analysis.validate import prepare_answers, prepare_poses
from study.errors import AnalysisError

ANALYSIS_STEPS = ("validate answers", "screening", "Table 1", "robustness", "mixed models", "reliability", "SSQ",
                  "SOS and power", "sample", "gaze")
REPORT_STEPS = ("figures", "tables", "HTML")
REPORT_MARKER = "report.html"
SIMULATED_BANNER = "SIMULATED RATINGS: these answers come from a seeded rater model, not from people"
PLACEHOLDER_BANNER = ("PLACEHOLDER IMAGES: stimuli from the offline tiny random-weight model, "
                      "not meaningful panoramas")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StudyContext:
    """What the report says about the study beyond the answers (all optional).

    Attributes
    ----------
    protocol : study.protocol.Protocol or None
        Name, version, SHA-256 and every item's wording and anchors.
    participants, sessions, stimuli : pandas.DataFrame or None
        The tables of ``study.export`` (demographics; durations, withdrawals, viewer; provenance).
    flagged_trials : pandas.DataFrame or None
        Trials flagged during the sessions (``study.export.load_flagged_trials``).
    gaze, validation : pandas.DataFrame or None
        Eye-gaze samples of the trials and the eye-tracker validations (``study.export.load_gaze``,
        ``load_validation``).
    source : str
        Where the data came from (database URL or export folder), for the report's header.
    """

    protocol: object | None = None
    participants: pd.DataFrame | None = None
    sessions: pd.DataFrame | None = None
    stimuli: pd.DataFrame | None = None
    flagged_trials: pd.DataFrame | None = None
    gaze: pd.DataFrame | None = None
    validation: pd.DataFrame | None = None
    source: str = ""


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows.

    Attributes
    ----------
    answers : pandas.DataFrame
        Validated test answers (training excluded, flagged trials too if asked), before screening.
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
    sos, sos_points : pandas.DataFrame
        The SOS parameter a per scale, and the MOS/SOS of every presentation.
    sensitivity : pandas.DataFrame
        Per scale: N, SD of the paired scene differences and the smallest difference detectable at 80 % power.
    demographics, durations, exclusions : pandas.DataFrame
    gaze : GazeAnalysis or None
        Fixations, saliency maps, head vs gaze, consistency, mask dwell and validation; None without gaze.
    banners : tuple of str
        Shown on every page (simulated ratings, placeholder images).
    warnings : tuple of str
        Shown prominently near the top (degenerate MLE, boundary or non-identifiable mixed-model fits, ...).
    context : StudyContext
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
    sos: pd.DataFrame = field(default_factory=pd.DataFrame)
    sos_points: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    demographics: pd.DataFrame = field(default_factory=pd.DataFrame)
    durations: pd.DataFrame = field(default_factory=pd.DataFrame)
    exclusions: pd.DataFrame = field(default_factory=pd.DataFrame)
    gaze: GazeAnalysis | None = None
    banners: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    context: StudyContext = field(default_factory=StudyContext)


def _step(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress(name)


def panostudy_version() -> str:
    """The installed panostudy version (or "unknown" when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("panostudy")
    except PackageNotFoundError:
        return "unknown"


def sensitivity(answers: pd.DataFrame, *, power: float = 0.8, alpha: float = 0.05) -> pd.DataFrame:
    """Per scale, the smallest scene difference the achieved N detects (paired t, Bonferroni and Holm).

    SD is that of the participants' paired differences between scene means, pooled over all scene pairs
    (root mean of the pairs' variances); the comparisons are all scene pairs.
    """
    rows = []
    for scale, rows_of_scale in answers.groupby("scale", observed=True, sort=False):
        means = rows_of_scale.groupby(["participant", "scene"], observed=True)["value"].mean().unstack()
        scenes = list(means.columns)
        m = len(scenes) * (len(scenes) - 1) // 2
        variances = [(means[a] - means[b]).dropna().var(ddof=1) for i, a in enumerate(scenes) for b in scenes[i + 1:]]
        sd = float(np.sqrt(np.nanmean(variances))) if variances else np.nan
        n = int(means.dropna().shape[0])
        ok = m >= 1 and n >= 2 and np.isfinite(sd) and sd > 0
        bonferroni = smallest_detectable_difference(n, sd, m, power=power, alpha=alpha) if ok else np.nan
        holm = smallest_detectable_difference(n, sd, m, power=power, alpha=alpha, correction="holm") if ok else np.nan
        rows.append((str(scale), n, m, sd, bonferroni, holm))
    return pd.DataFrame(rows, columns=["scale", "n", "comparisons", "sd_paired", "delta_bonferroni", "delta_holm"])


def _banners(answers: pd.DataFrame, context: StudyContext) -> tuple[str, ...]:
    out = []
    if "answer_source" in answers.columns and (answers["answer_source"].astype("string") == "simulated").any():
        out.append(SIMULATED_BANNER)
    stimuli = context.stimuli
    if stimuli is not None and "placeholder" in stimuli.columns:
        used = set(answers["stimulus"].astype(str))
        test = stimuli[stimuli["stimulus"].astype(str).isin(used)]
        if test["placeholder"].astype(bool).any():
            out.append(PLACEHOLDER_BANNER)
    return tuple(out)


def analyze(answers: pd.DataFrame, *, ssq: pd.DataFrame | None = None, poses: pd.DataFrame | None = None,
            screening: str = "bt500", context: StudyContext | None = None, exclude_flagged: bool = False,
            root: Path | None = None, progress: Progress | None = None) -> Analysis:
    """Runs every analysis of the study.

    Parameters
    ----------
    answers : pandas.DataFrame
        Long-format answers (training rows are dropped here).
    ssq, poses : pandas.DataFrame, optional
        SSQ answers and head-pose samples in the long formats of ``study.export``.
    screening : {"none", "bt500", "p913", "mle"}
        Observer screening applied before Table 1, the summaries and the mixed models.
    context : StudyContext, optional
        Protocol, participant, session and stimulus tables, flagged trials.
    exclude_flagged : bool
        Remove the answers of the context's flagged trials before anything else (else they are listed only).
    root : Path, optional
        Where relative stimulus and mask paths start (the gaze on the masked objects); the current folder.
    progress : callable, optional
        Called with each step's name (:data:`ANALYSIS_STEPS`) before it runs.

    Raises
    ------
    AnalysisError
        Bad input (see :func:`analysis.validate.prepare_answers`) or an unknown screening method.
    """
    context = context or StudyContext()
    if screening not in METHODS:
        raise AnalysisError(f"--screening {screening!r} is unknown; choose one of {', '.join(METHODS)}")
    _step(progress, "validate answers")
    test = prepare_answers(answers)
    if exclude_flagged:
        test = test.loc[~flagged_answer_mask(test, context.flagged_trials)].reset_index(drop=True)
        if test.empty:
            raise AnalysisError("--exclude-flagged removed every test answer; look at the flagged trials first")
    pose_frame = prepare_poses(poses)
    # Training panoramas are not analysed; neither is where people looked at them.
    pose_frame = pose_frame[pose_frame["scene"].astype("string").isin(test["scene"].astype("string").unique())]
    single = test["participant"].nunique() < 2
    _step(progress, "screening")
    # Every method except 'none' needs a panel to compare an observer with; with one participant say so.
    screened = screen(test, "none" if single else screening)
    if single and screening != "none":
        screened = dataclasses.replace(screened, notes=screened.notes + (
            f"--screening {screening} skipped: screening compares observers and there is a single participant",))
    warnings = list(screened.warnings)
    _step(progress, "Table 1")
    main = table1(screened)
    _step(progress, "robustness")
    robustness = {}
    for method in ((METHODS[0],) if single else METHODS):
        if method == screened.method:
            robustness[method] = main
            continue
        other = screen(test, method)
        robustness[method] = table1(other)
        warnings += [f"robustness check under --screening {method}: {w}" for w in other.warnings]
    _step(progress, "mixed models")
    effects = tuple(scene_effect(screened.answers, s) for s in main.scales) if not single else ()
    warnings += [w for e in effects for w in e.warnings]
    _step(progress, "reliability")
    kept = test[~test["participant"].astype("string").isin(screened.rejected)]
    rel = reliability(kept)
    _step(progress, "SSQ")
    scores = test_frame = None
    if ssq is not None and len(ssq):
        scores = ssq_scores(ssq)
        test_frame = ssq_pre_post(scores)
    _step(progress, "SOS and power")
    sos = sos_hypothesis(screened.answers)
    points = sos_points(screened.answers)
    sens = sensitivity(screened.answers) if not single else pd.DataFrame()
    _step(progress, "sample")
    demo = demographics(context.participants, test["participant"])
    durations = session_durations(context.sessions, test)
    exclusions = exclusions_summary(screened, context.sessions, context.flagged_trials, flagged_excluded=exclude_flagged)
    _step(progress, "gaze")
    gaze = gaze_analysis(context.gaze, pose_frame, context.validation, context.stimuli, test["stimulus"].unique(),
                         root=root or Path.cwd())
    return Analysis(test, screened, main, robustness, all_summaries(screened.answers), effects, rel, scores,
                    test_frame, pose_frame, sos, points, sens, demo, durations, exclusions, gaze,
                    _banners(test, context), tuple(warnings), context)


def stimulus_thumbnails(answers: pd.DataFrame, *, root: Path | None = None, width: int = 256,
                        per: str = "scene") -> dict[str, np.ndarray]:
    """A small equirect thumbnail of the first readable stimulus of every scene (for the heat maps), or with
    ``per="stimulus"`` of every stimulus (for the saliency maps), keyed by its path as in ``answers``.

    Stimulus paths are read as given, or relative to ``root``; scenes whose images are not found get none.
    """
    from PIL import Image

    thumbs = {}
    for key, rows in answers.groupby(per, observed=True, sort=False):
        for name in rows["stimulus"].astype("string").unique():
            path = Path(str(name))
            if not path.is_absolute() and root is not None:
                path = root / path
            if path.is_file():
                try:
                    with Image.open(path) as image:
                        thumbs[str(key)] = np.asarray(image.convert("RGB").resize((width, width // 2)))
                    break
                except OSError:
                    continue
    return thumbs


# -- HTML ------------------------------------------------------------------------------------------------------

P_COLUMNS = ("p", "p_holm", "icc2k_p")


def format_p(p: float) -> str:
    """A p value as a reader expects it: ``< 0.001`` below 0.001, else three decimals."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _frame_html(frame: pd.DataFrame, digits: int = 3, *, text: bool = False) -> str:
    shown = frame.copy()
    for column in P_COLUMNS:
        if column in shown.columns:
            shown[column] = shown[column].map(format_p)
    return shown.to_html(index=False, float_format=lambda x: f"{x:.{digits}f}", na_rep="n/a", border=0,
                         classes="data text" if text else "data", escape=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
body.flagged{padding-top:3.2em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.data{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.data th,table.data td{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
table.data th{background:#f4f4f4}img{max-width:100%}.note{color:#555;font-size:.9em}
figure{margin:1em 0}figcaption{color:#444;font-size:.9em;margin-top:.3em}
.banner{position:fixed;top:0;left:0;right:0;z-index:10;background:#b00020;color:#fff;font-weight:bold;
  text-align:center;padding:.45em 1em;font-size:.95em;line-height:1.35}
.warnings{border:2px solid #c77700;background:#fff4e0;padding:.6em 1em;margin:1em 0}
.warnings h2{margin-top:0;border:none;color:#8a4b00;font-size:1.15em}
.design{border-left:4px solid #1f5fa8;background:#eef4fb;padding:.5em 1em}
table.t1 td,table.t1 th{text-align:center}table.text td,table.text th{text-align:left}table.t1 td:first-child{text-align:left;font-weight:bold}
@media print{.banner{position:fixed;top:0}body.flagged{padding-top:3.2em}}
"""


def _section_banner(a: Analysis, figures: Mapping[str, bytes]) -> str:
    if not a.banners:
        return ""
    # position: fixed repeats the banner at the top of every printed page as well as on screen.
    return "<div class='banner'>" + "<br>".join(html.escape(b) for b in a.banners) + "</div>"


def _section_header(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    protocol = a.context.protocol
    if protocol is not None:
        proto = (f"Protocol <b>{e(protocol.name)}</b> {e(protocol.version)}, SHA-256 <code>{e(protocol.sha256)}</code>.")
    elif "protocol_hash" in a.answers.columns:
        hashes = ", ".join(sorted(a.answers["protocol_hash"].astype(str).unique()))
        proto = f"Protocol SHA-256 <code>{e(hashes)}</code> (protocol text not given: item wording not shown)."
    else:
        proto = "Protocol not given."
    source = f" Data: {e(a.context.source)}." if a.context.source else ""
    return (
        f"<p class='note'>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by panostudy "
        f"{e(panostudy_version())}. {proto}{source} {len(a.answers)} test answers (training excluded) from "
        f"{a.answers['participant'].nunique()} participants, {a.answers['stimulus'].nunique()} stimuli, "
        f"{a.answers['scene'].nunique()} scenes, {a.answers['scale'].nunique()} scales.</p>"
    )


def _section_warnings(a: Analysis, figures: Mapping[str, bytes]) -> str:
    if not a.warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in a.warnings)
    return f"<div class='warnings'><h2>Warnings: read before using these results</h2><ul>{items}</ul></div>"


def _section_table1(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    t = a.table1
    lookup = {(r.scale, r.scene): r for r in t.cells.itertuples()}
    head = "<tr><th>Scale \\ Scene</th>" + "".join(f"<th>{e(s)}</th>" for s in t.scenes) + "</tr>"
    body = []
    for scale in t.scales:
        cells = []
        for scene in t.scenes:
            r = lookup[(scale, scene)]
            hw = "n/a" if np.isnan(r.half_width) else f"{r.half_width:.2f}"
            boot = "" if np.isnan(r.boot_low) else f"<br><span class='note'>BCa [{r.boot_low:.2f}, {r.boot_high:.2f}]</span>"
            mark = "†" if r.t_outside_scale else ""
            cells.append(f"<td>{r.mos:.2f} ± {hw}{mark} <span class='note'>(N={int(r.n)})</span>{boot}</td>")
        body.append(f"<tr><td>{e(scale)}</td>{''.join(cells)}</tr>")
    outside = f" {OUTSIDE_NOTE}." if t.cells["t_outside_scale"].any() else ""
    scale_range = f"{int(a.answers['scale_min'].min())}–{int(a.answers['scale_max'].max())}"
    return (
        "<h2>Table 1</h2>"
        f"<p>Mean score per scale (rows) and scene (columns) on the {scale_range} scale: mean ± half-width of the "
        f"{e(t.ci_method)}; below it the BCa bootstrap 95 % interval over participants (2000 resamples).{outside}</p>"
        f"<table class='data t1'>{head}{''.join(body)}</table>"
        + _figure(figures["mos"], "Table 1 means with confidence intervals",
                  f"Each point is the mean over participants of their cell means; bars: {e(t.ci_method.split(' (')[0])}. "
                  f"The axis spans the whole scale ({scale_range}).")
    )


def _section_screening(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    parts = ["<h2>Observer screening</h2><ul>"]
    parts += [f"<li>{e(n)}</li>" for n in a.screening.notes]
    parts.append("</ul>")
    parts.append(_frame_html(a.screening.participants))
    parts.append(_figure(figures["bias"], "per-participant bias",
                         "Per-participant bias: how much more lenient (positive) or harsher (negative) each participant "
                         "rated than the panel, one point per participant."))
    parts.append("<h3>Robustness: Table 1 under every screening method</h3>")
    comp = pd.concat({m + (" (warning above)" if any(w.startswith(f"robustness check under --screening {m}:")
                                                      for w in a.warnings) else ""): tab.cells.set_index(["scale", "scene"])["mos"]
                      for m, tab in a.robustness.items()}, axis=1)
    parts.append(comp.reset_index().to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="data"))
    return "".join(parts)


def _section_distributions(a: Analysis, figures: Mapping[str, bytes]) -> str:
    return "<h2>Rating distributions</h2>" + _figure(
        figures["distributions"], "rating distributions",
        "Share of all answers (every item of the scale, every participant, screening not applied) at each rating "
        "value, per scene.")


def _section_scene_effect(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    parts = ["<h2>Scene effect per scale (linear mixed model)</h2>"]
    if not a.scene_effects:
        return parts[0] + "<p class='note'>Not fitted: a single participant.</p>"
    models = sorted({effect.model for effect in a.scene_effects})
    parts.append(f"<p>Model: <code>{e(' / '.join(models))}</code>, REML. Pairwise scene differences with Wald z tests, "
                 "Holm-adjusted p values, and d = difference / total SD (Westfall, Kenny &amp; Judd 2014).</p>")
    for note in sorted({effect.design_note for effect in a.scene_effects if effect.design_note}):
        parts.append(f"<p class='design'><b>What this inference is about.</b> {e(note)}</p>")
    for effect in a.scene_effects:
        var = ", ".join(f"{k} {v:.3f}" for k, v in effect.variances.items())
        state = "converged" if effect.converged else "<b>did not converge</b>"
        parts.append(f"<h3>{e(effect.scale)}</h3><p class='note'><code>{e(effect.model)}</code>: {effect.n} answers; "
                     f"variances: {e(var)}; {state}.</p>")
        if effect.warnings:
            parts.append("<div class='warnings'><ul>" + "".join(f"<li>{e(w)}</li>" for w in effect.warnings) + "</ul></div>")
        parts.append(_frame_html(effect.contrasts))
    return "".join(parts)


def _section_sos(a: Analysis, figures: Mapping[str, bytes]) -> str:
    if a.sos.empty:
        return ""
    return ("<h2>Rating diversity: the SOS hypothesis</h2><p>SOS² = a (MOS − min)(max − MOS) fitted by least squares "
            "over each scale's presentations (Hoßfeld, Schatz &amp; Egger 2011): a is the share of the largest "
            "spread possible at that MOS, comparable across studies.</p>" + _frame_html(a.sos)
            + _figure(figures["sos"], "SOS against MOS",
                      "One point per presentation (stimulus × item): the SD of its ratings against their mean; red: "
                      "the fitted curve; dotted: the largest spread possible (a = 1)."))


def _section_sensitivity(a: Analysis, figures: Mapping[str, bytes]) -> str:
    if a.sensitivity.empty:
        return ""
    return ("<h2>What this sample size can detect</h2><p>The smallest difference between two scenes that a paired "
            "t-test over these N participants detects with 80 % power at a family-wise α = 0.05 over all scene pairs "
            "(Bonferroni, and Holm's step-down procedure with all pairs differing), given the SD of the participants' "
            "paired differences. This describes the design's sensitivity; it is not a post-hoc power of the observed "
            "effects. Plan a study with <code>panostudy power</code>.</p>" + _frame_html(a.sensitivity))


def _section_reliability(a: Analysis, figures: Mapping[str, bytes]) -> str:
    return ("<h2>Reliability</h2><p>ICC(2,k): two-way random effects, average measures, absolute agreement "
            "(pingouin); Krippendorff's α with ordinal distances. Targets are presentations (stimulus × item).</p>"
            + _frame_html(a.reliability))


def _section_ssq(a: Analysis, figures: Mapping[str, bytes]) -> str:
    parts = ["<h2>Simulator sickness (SSQ)</h2>"]
    if a.ssq_test is None:
        return parts[0] + "<p class='note'>No SSQ answers in this study.</p>"
    tests = sorted(a.ssq_test["test"].dropna().unique())
    parts.append("<p>Kennedy et al. (1993) weights: Nausea ×9.54, Oculomotor ×7.58, Disorientation ×13.92, "
                 f"Total = (N+O+D) ×3.74. Pre vs. post: {html.escape('; '.join(tests))}; rank-biserial r as effect "
                 "size (positive: more symptoms after).</p>")
    parts.append(_frame_html(a.ssq_test.drop(columns="test")))
    parts.append(_figure(figures["ssq"], "SSQ before and after",
                         "Weighted SSQ scores before and after the session; grey lines join each participant's pair."))
    return "".join(parts)


def _section_sample(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    parts = ["<h2>Participants, sessions and exclusions</h2><h3>Demographics</h3>", _frame_html(a.demographics)]
    parts.append(f"<h3>Session durations</h3><p>{e(a.durations.attrs.get('summary', ''))}</p>")
    parts.append("<h3>Exclusions</h3>")
    parts.append(_flag_count(a))
    if a.exclusions.empty:
        parts.append("<p>No observer was screened out, no session withdrawn and no trial flagged.</p>")
    else:
        parts.append(_frame_html(a.exclusions, text=True))
    return "".join(parts)


def _flag_count(a: Analysis) -> str:
    """One sentence: how many trials the sessions flagged, of which kind, and what the analysis did with them."""
    flagged = a.context.flagged_trials
    if flagged is None or flagged.empty:
        return ""
    kinds = ", ".join(f"{flag} {count}" for flag, count in flagged["flag"].astype(str).value_counts().items())
    trials = len(flagged[["participant", "session_number", "trial_index"]].drop_duplicates())
    removed = (a.exclusions["effect"] == "answers removed").any() if len(a.exclusions) else False
    fate = ("their answers were left out (--exclude-flagged)" if removed
            else "their answers are analysed; --exclude-flagged leaves them out")
    return f"<p>{trials} flagged trial{'s' if trials != 1 else ''} ({html.escape(kinds)}): {fate}.</p>"


def _section_head_motion(a: Analysis, figures: Mapping[str, bytes]) -> str:
    parts = ["<h2>Head motion</h2>"]
    if len(a.poses) == 0:
        from analysis.figures import NO_POSE_NOTE

        parts.append(f"<p class='note'>{html.escape(NO_POSE_NOTE)}.</p>")
        caption = "No head-pose samples were recorded."
    else:
        caption = (f"Where participants looked: density of head directions in each scene ({len(a.poses)} samples in "
                   "all; each panel's title gives its own count), over a thumbnail of one of its stimuli, yaw 0° = "
                   "image centre. Colour: per cent of that scene's samples per square degree.")
    parts.append(_figure(figures["heatmaps"], "head-motion heat maps", caption))
    return "".join(parts)


def _stimulus_name(path: str) -> str:
    """A stimulus as its scene folder and file name."""
    parts = str(path).replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _section_gaze(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    parts = ["<h2>Eye gaze</h2>"]
    g = a.gaze
    if g is None:
        return parts[0] + f"<p class='note'>{e(NO_GAZE_NOTE)[0].upper() + e(NO_GAZE_NOTE)[1:]}.</p>"
    parts.append(f"<p>{g.samples} gaze samples of {g.participants} participants in the test trials; {len(g.fixations)} "
                 "fixations found with I-VT (120°/s, at least 80 ms; Salient360! defaults), losses up to 75 ms bridged. "
                 "Directions are in each stimulus's frame (yaw 0° = image centre).</p>")
    if g.notes:
        parts.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in g.notes) + "</ul>")
    return "".join(parts)


def _section_validation(a: Analysis, figures: Mapping[str, bytes]) -> str:
    g = a.gaze
    if g is None:
        return ""
    parts = ["<h3>Eye-tracker validation</h3>"]
    if g.validation.empty:
        return parts[0] + "<p class='note'>No validation was recorded (the protocol has no [validation] step).</p>"
    table = g.validation
    final = table["accuracy_deg"].astype(float)
    protocol = a.context.protocol
    spec = getattr(protocol, "validation", None)
    what = (f"{len(spec.targets)} targets, {spec.target_s:g} s each, the first {spec.discard_s:g} s of each left out"
            if spec is not None else "the protocol's targets")
    threshold = "" if spec is None or spec.threshold_deg is None else f" Threshold {spec.threshold_deg:g}°."
    parts.append(f"<p>Per participant and session, the final attempt ({what}): accuracy = mean angular error to the "
                 "target, precision = RMS of sample-to-sample angles and SD around the samples' mean, data loss = "
                 f"share of invalid samples.{threshold} Over participants: accuracy {final.mean():.2f}° (SD "
                 f"{final.std(ddof=1) if len(final) > 1 else float('nan'):.2f}°, range {final.min():.2f}–{final.max():.2f}°); "
                 f"{int(table['recalibrate'].astype(bool).sum())} final attempts above the threshold; "
                 f"{int((table['attempts'] > 1).sum())} sessions repeated the validation.</p>")
    parts.append(_frame_html(table, 2))
    if len(g.validation_targets):
        parts.append("<p>Mean accuracy per target over the final attempts (accuracy usually degrades away from the "
                     "centre):</p>" + _frame_html(g.validation_targets, 2))
    return "".join(parts)


def _section_saliency(a: Analysis, figures: Mapping[str, bytes]) -> str:
    g = a.gaze
    if g is None:
        return ""
    parts = ["<h3>Saliency maps</h3>",
             _figure(figures["saliency"], "gaze saliency maps per stimulus",
                     "Where participants fixated, per stimulus: a Gaussian of angular distance (σ = 2°) around every "
                     "fixation, normalised to a density on the sphere, over the stimulus. Colour: per cent of the map "
                     "per square degree."),
             "<h3>Head against eye gaze, per scene</h3>",
             _figure(figures["head_vs_gaze"], "head-only and gaze maps per scene",
                     "Left: head-only map of the same trials (viewport centre, 100 ms centroids, σ = 3.34°); right: the "
                     "gaze map (fixations, σ = 2°).")]
    if len(g.head_vs_gaze):
        parts.append("<p>How well the head-only map predicts the gaze: the head map scored against the gaze map (KLD, "
                     "CC, SIM; each pixel weighted by its solid angle) and the gaze fixations (NSS, AUC-Judd).</p>"
                     + _frame_html(g.head_vs_gaze))
    if len(g.consistency):
        parts.append("<h3>Inter-observer consistency</h3><p>Split-half CC between the gaze maps of two random halves "
                     "of the participants (100 splits), with a 95 % jackknife CI over participants; the last row is "
                     "the mean over stimuli.</p>"
                     + _frame_html(g.consistency.assign(stimulus=g.consistency["stimulus"].map(_stimulus_name))))
    return "".join(parts)


def _section_mask_dwell(a: Analysis, figures: Mapping[str, bytes]) -> str:
    g = a.gaze
    if g is None:
        return ""
    parts = ["<h3>Gaze on the masked objects</h3>"]
    if g.dwell is None:
        return parts[0] + "<p class='note'>No mask-dwell table: see the notes above.</p>"
    parts.append("<p>Each object's stage-1 mask, projected onto the equirect with the generator's own front-face "
                 "projection. Per object and scene: the share of the valid viewing time the gaze spent on it (dwell), "
                 "the share of fixations on it, and the time to the first fixation on it (TTFF; trials with none left "
                 "out), each the mean over participants of their trial means with a Student-t 95 % CI (with few "
                 "participants such an interval may reach below 0). Chance is the object's share of the sphere's "
                 "solid angle: where a viewer looking everywhere alike would dwell; × chance is the dwell share over "
                 "it. <code>mask_dwell.csv</code> has every number.</p>")
    parts.append(_frame_html(_dwell_shown(g.dwell[g.dwell["level"] == "scene"]), text=True))
    stimulus = g.dwell[g.dwell["level"] == "stimulus"]
    parts.append("<details><summary>Per stimulus</summary>"
                 + _frame_html(_dwell_shown(stimulus.assign(scene=stimulus["stimulus"].map(_stimulus_name))), text=True)
                 + "</details>")
    return "".join(parts)


def _dwell_shown(rows: pd.DataFrame) -> pd.DataFrame:
    """The mask-dwell rows as the page shows them: each measure with its CI in one cell."""
    def with_ci(name: str, prefix: str, digits: int) -> pd.Series:
        return rows.apply(lambda r: "n/a" if pd.isna(r[name]) else
                          f"{r[name]:.{digits}f} [{r[f'{prefix}_ci_low']:.{digits}f}, {r[f'{prefix}_ci_high']:.{digits}f}]"
                          if pd.notna(r[f"{prefix}_ci_low"]) else f"{r[name]:.{digits}f}", axis=1)

    return pd.DataFrame({
        "scene / stimulus": rows["scene"], "object": rows["object"], "chance": rows["chance_share"].map("{:.3f}".format),
        "dwell share [95 % CI]": with_ci("dwell_share", "dwell", 3),
        "× chance": (rows["dwell_share"] / rows["chance_share"]).map("{:.1f}".format),
        "fixation share [95 % CI]": with_ci("fixation_share", "fixation", 3),
        "TTFF s [95 % CI]": with_ci("ttff_s", "ttff", 1),
        "trials with a fixation on it": rows["fixated_trials"].map("{:.0%}".format),
        "N": rows["n_participants"],
    })


def _section_scanpaths(a: Analysis, figures: Mapping[str, bytes]) -> str:
    if a.gaze is None:
        return ""
    return "<h3>Scanpaths</h3>" + _figure(
        figures["scanpaths"], "scanpaths",
        "The first 8 s of three participants' fixations per stimulus, numbered in order; marker area grows with the "
        "fixation's duration.")


def _section_items(a: Analysis, figures: Mapping[str, bytes]) -> str:
    return "<h2>MOS per scene and item</h2>" + _frame_html(a.summaries["item"])


def _section_appendix(a: Analysis, figures: Mapping[str, bytes]) -> str:
    e = html.escape
    protocol = a.context.protocol
    parts = ["<h2>Appendix: the items as participants saw them</h2>"]
    if protocol is None:
        return parts[0] + ("<p class='note'>The protocol was not given; analyse the study database or an export "
                           "folder (it holds protocol.toml), or pass --protocol.</p>")
    parts.append(f"<p>Exposure {protocol.exposure_s:g} s per panorama; head pose at {protocol.pose_rate_hz:g} Hz; "
                 f"{len(protocol.training.stimuli)} training panoramas (not analysed); order randomised per participant, "
                 "scale order counterbalanced (Williams Latin square).</p>")
    rows = []
    for scale in protocol.scales:
        for item in scale.items:
            anchors = "; ".join(f"{v} = {label}" for v, label in sorted(item.labels.items()))
            rows.append((f"{scale.id} ({scale.name})", item.id, f"{scale.min}–{scale.max}", item.question, anchors))
    parts.append(pd.DataFrame(rows, columns=["scale", "item", "range", "question", "anchors"]).to_html(
        index=False, border=0, classes="data text"))
    labels = "; ".join(f"{v} = {label}" for v, label in sorted(protocol.ssq.labels.items()))
    parts.append(f"<p>SSQ ({e(protocol.ssq.question)}), answers {e(labels)}: "
                 + ", ".join(f"{k}. {e(name)}" for k, name in enumerate(protocol.ssq.items, start=1)) + ".</p>")
    return "".join(parts)


#: The report's sections in page order; each takes (Analysis, figures) and returns HTML.
SECTIONS: tuple[Callable[[Analysis, Mapping[str, bytes]], str], ...] = (
    _section_banner, _section_header, _section_warnings, _section_table1, _section_screening, _section_distributions,
    _section_scene_effect, _section_sos, _section_sensitivity, _section_reliability, _section_ssq, _section_sample,
    _section_head_motion, _section_gaze, _section_validation, _section_saliency, _section_mask_dwell,
    _section_scanpaths, _section_items, _section_appendix,
)


def render_html(analysis: Analysis, figures: Mapping[str, bytes], *, title: str = "panostudy analysis") -> str:
    """The report page: tables inline, figures embedded as base64 PNG, nothing external."""
    e = html.escape
    flagged = " class='flagged'" if analysis.banners else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head>"
             f"<body{flagged}>", f"<h1>{e(title)}</h1>"]
    parts += [section(analysis, figures) for section in SECTIONS]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _figures(analysis: Analysis, thumbnails: Mapping[str, np.ndarray] | None,
             stimulus_images: Mapping[str, np.ndarray] | None = None) -> dict[str, bytes]:
    from analysis.figures import (
        bias_figure, distribution_figure, figure_png, head_gaze_figure, heatmap_figure, mos_figure, saliency_figure,
        scanpath_figure, sos_figure, ssq_figure,
    )

    scale_range = (float(analysis.answers["scale_min"].min()), float(analysis.answers["scale_max"].max()))
    figs = {
        "mos": mos_figure(analysis.table1, scale_range),
        "distributions": distribution_figure(analysis.answers),
        "bias": bias_figure(analysis.screening, analysis.answers),
        "heatmaps": heatmap_figure(analysis.poses, thumbnails),
        "sos": sos_figure(analysis.sos_points, analysis.sos),
    }
    if analysis.ssq_scores is not None:
        figs["ssq"] = ssq_figure(analysis.ssq_scores)
    if analysis.gaze is not None:
        names = {s: _stimulus_name(s) for s in analysis.gaze.stimulus_maps}
        figs["saliency"] = saliency_figure(analysis.gaze.stimulus_maps, stimulus_images, names)
        figs["head_vs_gaze"] = head_gaze_figure(analysis.gaze.scene_maps, thumbnails)
        figs["scanpaths"] = scanpath_figure(analysis.gaze.fixations, stimulus_images, names)
    stamp = "\n".join(b.split(":")[0] for b in analysis.banners)
    return {name: figure_png(fig, stamp=stamp) for name, fig in figs.items()}


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_MARKER).is_file())):
        raise AnalysisError(
            f"--out {out}: exists and is not an earlier panostudy report folder; choose a new or empty folder"
        )


def _banner_lines(analysis: Analysis, prefix: str, suffix: str = "") -> str:
    return "".join(f"{prefix}{b}{suffix}\n" for b in analysis.banners) + ("\n" if analysis.banners else "")


def write_report(analysis: Analysis, out: str | Path, *, thumbnails: Mapping[str, np.ndarray] | None = None,
                 stimulus_images: Mapping[str, np.ndarray] | None = None,
                 progress: Progress | None = None) -> dict[str, Path]:
    """Writes ``report.html``, ``datasheet.md``, Table 1 as CSV/Markdown/LaTeX, the other tables as CSV and the
    figures as PNG. ``thumbnails`` are one stimulus per scene (the heat maps), ``stimulus_images`` every stimulus
    (the saliency maps and scanpaths), both from :func:`stimulus_thumbnails`.

    Everything is written into a temporary folder next to ``out`` (its parents are created) and moved into
    place at the end, so a failed run leaves either the previous report or none, never half of one. An existing
    ``out`` is only replaced if it is empty or an earlier report (it holds ``report.html``).

    Returns
    -------
    dict str -> pathlib.Path
        Name of each written file to its final path.
    """
    from analysis.datasheet import datasheet_markdown

    out = Path(out).resolve()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # mkdtemp makes the folder private (0700), as a report of participant data should be.
        _step(progress, "figures")
        figures = _figures(analysis, thumbnails, stimulus_images)
        (tmp / "figures").mkdir()
        for name, png in figures.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        _step(progress, "tables")
        t = analysis.table1
        files = {"table1.csv": to_csv(t), "table1.md": _banner_lines(analysis, "> **", "**") + to_markdown(t),
                 "table1.tex": _banner_lines(analysis, "% ") + to_latex(t), "datasheet.md": datasheet_markdown(analysis)}
        tables = {
            "screening_participants.csv": analysis.screening.participants,
            "reliability.csv": analysis.reliability,
            "sos.csv": analysis.sos,
            "sensitivity.csv": analysis.sensitivity,
            "exclusions.csv": analysis.exclusions,
            "session_durations.csv": analysis.durations,
            **{f"mos_per_{k}.csv": v for k, v in analysis.summaries.items()},
        }
        if len(analysis.screening.presentations):
            tables["screening_presentations.csv"] = analysis.screening.presentations
        if analysis.scene_effects:
            tables["mixed_contrasts.csv"] = pd.concat(
                [e.contrasts.assign(scale=e.scale, model=e.model) for e in analysis.scene_effects], ignore_index=True)
        if analysis.ssq_scores is not None:
            tables["ssq_scores.csv"] = analysis.ssq_scores
            tables["ssq_test.csv"] = analysis.ssq_test
        if analysis.gaze is not None:
            tables["gaze_fixations.csv"] = analysis.gaze.fixations
            tables["gaze_validation.csv"] = analysis.gaze.validation
            tables["head_vs_gaze.csv"] = analysis.gaze.head_vs_gaze
            tables["inter_observer_consistency.csv"] = analysis.gaze.consistency
            if analysis.gaze.dwell is not None:
                tables["mask_dwell.csv"] = analysis.gaze.dwell
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


