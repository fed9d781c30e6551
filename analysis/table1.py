"""The paper's Table 1 (scales as rows, scenes as columns) with N and confidence intervals, and its renderers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.mos import SINGLE_OBSERVER_NOTE, participant_means, summarise
from analysis.screening import ScreeningResult
from analysis.simulate import PAPER_SCALES, PAPER_SCENES


@dataclass(frozen=True)
class Table1:
    """Mean score of every scale × scene cell.

    Attributes
    ----------
    cells : pandas.DataFrame
        Tidy, one row per cell: ``scale, scene, mos, sd, n, half_width, ci_low, ci_high, boot_low, boot_high,
        t_outside_scale, note``. ``sd`` is the SD of the participants' cell means (for ``mle``: of the x_e of
        the cell's presentations); ``n`` the number of participants; ``boot_*`` the BCa bootstrap interval over
        participants; ``t_outside_scale`` flags a CI that reaches beyond the scale's range.
    scales, scenes : tuple of str
        Row and column order.
    screening : str
        The screening method the answers went through.
    ci_method : str
        How the intervals were computed.
    notes : tuple of str
        Screening notes and caveats (e.g. a single participant).
    """

    cells: pd.DataFrame
    scales: tuple[str, ...]
    scenes: tuple[str, ...]
    screening: str
    ci_method: str
    notes: tuple[str, ...]

    def wide(self, column: str = "mos") -> pd.DataFrame:
        """``column`` as a scales × scenes frame in the paper's layout."""
        return self.cells.pivot(index="scale", columns="scene", values=column).loc[list(self.scales), list(self.scenes)]


def ordered(levels: Sequence[str], preferred: Sequence[str]) -> tuple[str, ...]:
    """``levels`` with the paper's order first and any others after, alphabetically."""
    present = [str(level) for level in levels]
    return tuple([p for p in preferred if p in present] + sorted(p for p in present if p not in preferred))


def bootstrap_cells(answers: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """BCa bootstrap CI of every Table 1 cell, resampling participants (their cell means).

    Returns ``scale, scene, boot_low, boot_high``; NaN where fewer than 3 participants rated the cell or all
    their means are equal (no spread to resample). scipy's ``bootstrap(method="BCa")`` with a seeded generator.

    References
    ----------
    B. Efron, "Better bootstrap confidence intervals", JASA 82 (1987) 171–185; T. Hoßfeld et al., "Confidence
    interval estimators for MOS values", arXiv:1806.01126 (2018).
    """
    means = participant_means(answers, ["scale", "scene"])
    rng = np.random.default_rng(seed)
    rows = []
    for (scale, scene), values in means.groupby(["scale", "scene"], observed=True)["value"]:
        data = values.to_numpy(float)
        low = high = np.nan
        if data.size >= 3 and np.ptp(data) > 0:
            result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                     method="BCa", vectorized=True, rng=rng)
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        rows.append((str(scale), str(scene), low, high))
    return pd.DataFrame(rows, columns=["scale", "scene", "boot_low", "boot_high"]).astype({"scale": "string", "scene": "string"})


def table1(screened: ScreeningResult, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Table1:
    """Builds Table 1 from screened answers.

    Parameters
    ----------
    screened : ScreeningResult
        Output of :func:`analysis.screening.screen`.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    Table1

    Notes
    -----
    For ``none``, ``bt500`` and ``p913`` a cell is the MOS over participants of each participant's mean
    answer in the cell (all stimuli of the scene, all items of the scale), with a Student-t interval
    (:func:`analysis.mos.summarise`); N is the number of participants.

    For ``mle`` a cell is the mean of the estimated true qualities x_e of its n_e presentations, with the
    asymptotic interval ± z · sqrt(Σ_e SE(x_e)²) / n_e from the Fisher information; N is still the number
    of participants who rated the cell.
    """
    answers = screened.answers
    scales = ordered(answers["scale"].astype("string").unique(), tuple(PAPER_SCALES))
    scenes = ordered(answers["scene"].astype("string").unique(), PAPER_SCENES)
    notes = list(screened.notes)
    if screened.method == "mle":
        pres = screened.presentations
        grouped = pres.groupby(["scale", "scene"], observed=True)
        cells = grouped.agg(mos=("x_e", "mean"), sd=("x_e", "std")).reset_index()
        se = grouped["x_e_se"].apply(lambda s: np.sqrt((s**2).sum()) / len(s)).to_numpy()
        z = stats.norm.ppf(0.5 + confidence / 2.0)
        cells["n"] = (
            answers.groupby(["scale", "scene"], observed=True)["participant"].nunique()
            .reindex(pd.MultiIndex.from_frame(cells[["scale", "scene"]])).to_numpy()
        )
        cells["half_width"] = z * se
        cells["ci_low"] = cells["mos"] - cells["half_width"]
        cells["ci_high"] = cells["mos"] + cells["half_width"]
        cells["note"] = ""
        ci_method = f"{confidence:.0%} asymptotic CI of the mean x_e from the MLE's Fisher information"
    else:
        cells = summarise(answers, ["scale", "scene"], confidence=confidence)
        ci_method = f"{confidence:.0%} Student-t CI over participants (t(1−α/2, N−1)·SD/√N)"
        if (cells["n"] < 2).any():
            notes.append(SINGLE_OBSERVER_NOTE)
    cells["scale"] = cells["scale"].astype("string")
    cells["scene"] = cells["scene"].astype("string")
    low = answers.groupby("scale", observed=True)["scale_min"].min()
    high = answers.groupby("scale", observed=True)["scale_max"].max()
    low.index, high.index = low.index.astype(str), high.index.astype(str)
    cells["t_outside_scale"] = ((cells["ci_low"] < cells["scale"].map(low).astype(float))
                                | (cells["ci_high"] > cells["scale"].map(high).astype(float))).fillna(False).astype(bool)
    if screened.method == "mle":
        cells["boot_low"] = cells["boot_high"] = np.nan
    else:
        boot = bootstrap_cells(answers, confidence=confidence, n_resamples=n_resamples, seed=seed)
        cells = cells.drop(columns=[c for c in ("boot_low", "boot_high") if c in cells]).merge(boot, on=["scale", "scene"], how="left")
    if cells["t_outside_scale"].any():
        notes.append(f"{int(cells['t_outside_scale'].sum())} confidence interval(s) reach beyond the scale's range "
                     "(marked †); the bootstrap interval stays inside it")
    columns = ["scale", "scene", "mos", "sd", "n", "half_width", "ci_low", "ci_high", "boot_low", "boot_high",
               "t_outside_scale", "note"]
    cells = cells[columns]
    order = {s: i for i, s in enumerate(scales)}, {s: i for i, s in enumerate(scenes)}
    cells = cells.sort_values(["scale", "scene"], key=lambda c: c.map(order[0] if c.name == "scale" else order[1]))
    return Table1(cells.reset_index(drop=True), scales, scenes, screened.method, ci_method, tuple(notes))


def _cell_text(row: pd.Series, digits: int, with_ci: bool) -> str:
    if not with_ci:
        return f"{row['mos']:.{digits}f}"
    if np.isnan(row["half_width"]):
        return f"{row['mos']:.{digits}f} (CI n/a)"
    mark = "†" if row.get("t_outside_scale", False) else ""
    return f"{row['mos']:.{digits}f} ± {row['half_width']:.{digits}f}{mark}"


OUTSIDE_NOTE = "† the CI reaches beyond the scale's range"


def _wide_text(t: Table1, digits: int, with_ci: bool) -> list[list[str]]:
    lookup = {(r.scale, r.scene): r for _, r in t.cells.iterrows()}
    return [[scale] + [_cell_text(lookup[(scale, scene)], digits, with_ci) for scene in t.scenes] for scale in t.scales]


def _n_text(t: Table1) -> str:
    n = t.cells["n"]
    return f"N = {int(n.min())}" if n.min() == n.max() else f"N = {int(n.min())}..{int(n.max())}"


def to_csv(t: Table1) -> str:
    """Tidy CSV, one row per cell, with N, SD and the CI bounds (full precision)."""
    columns = ["scale", "scene", "mos", "sd", "n", "half_width", "ci_low", "ci_high", "boot_low", "boot_high",
               "t_outside_scale", "note"]
    return t.cells[columns].assign(screening=t.screening).to_csv(index=False)


def to_markdown(t: Table1, *, digits: int = 2, with_ci: bool = True) -> str:
    """GitHub Markdown in the paper's layout; cells ``mean ± CI half-width``, N and method below."""
    rows = _wide_text(t, digits, with_ci)
    lines = ["| Scenes | " + " | ".join(t.scenes) + " |", "|---|" + "---:|" * len(t.scenes)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    outside = f" {OUTSIDE_NOTE}." if t.cells["t_outside_scale"].any() else ""
    lines.append(f"{_n_text(t)} participants; {t.ci_method}; screening: {t.screening}.{outside}")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                         ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(raw, escaped)
    return text


def to_latex(t: Table1, *, digits: int = 2, with_ci: bool = True) -> str:
    """A booktabs ``table`` in the paper's layout, ready for ``\\input``."""
    rows = _wide_text(t, digits, with_ci)
    body = [" & ".join(_latex_escape(c).replace("±", r"$\pm$").replace("†", r"$^\dagger$") for c in r) + r" \\"
            for r in rows]
    caption = (
        "Average scores of ACR, VAR, SSDS and PCR in the scenes"
        + (f" (mean $\\pm$ {_latex_escape(t.ci_method.split(' ')[0])} CI half-width" if with_ci else " (")
        + f"; {_latex_escape(_n_text(t))}; screening: {_latex_escape(t.screening)})."
    )
    return "\n".join([
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        r"\begin{tabular}{l" + "c" * len(t.scenes) + "}",
        r"\toprule",
        "Scenes & " + " & ".join(_latex_escape(s) for s in t.scenes) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]) + "\n"


def to_rich(t: Table1, *, digits: int = 2, with_ci: bool = True):
    """A ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    table = Table(title=f"Table 1 — mean scores (screening: {t.screening})",
                  caption=f"{_n_text(t)} participants; {t.ci_method}")
    table.add_column("Scenes", style="bold")
    for scene in t.scenes:
        table.add_column(scene, justify="right")
    for row in _wide_text(t, digits, with_ci):
        table.add_row(*row)
    return table
