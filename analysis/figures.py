"""The report's matplotlib figures (Agg, no pyplot state); matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.screening import ScreeningResult, p913_bias_removal
from analysis.ssq import SUBSCALES
from analysis.table1 import Table1, ordered
from analysis.simulate import PAPER_SCALES, PAPER_SCENES

NO_POSE_NOTE = "no pose data: this study recorded no head-pose samples"
# viewing_heatmap costs one kernel evaluation per sample and pixel; a map of the whole panel needs neither
# every 30 Hz sample nor more than ~3° per pixel next to the 10° kernel.
HEATMAP_MAX_SAMPLES = 1000
HEATMAP_SIZE = (128, 64)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_png(fig, *, dpi: int = 110, stamp: str = "") -> bytes:
    """The figure as PNG bytes; ``stamp`` (e.g. "SIMULATED RATINGS") is written across it, so that a figure
    copied out of the report still says where it came from."""
    if stamp:
        fig.text(0.5, 0.5, stamp, ha="center", va="center", rotation=20, fontsize=22, color="tab:red", alpha=0.18,
                 fontweight="bold", zorder=10, linespacing=1.6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def mos_figure(t: Table1, scale_range: tuple[float, float] = (1.0, 5.0)):
    """Mean score with its confidence interval for every scene (x) and scale (one marker series each), on an
    axis from the scale's minimum to its maximum."""
    low, high = scale_range
    fig = _figure(7.0, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(t.scenes))
    width = 0.8 / max(len(t.scales), 1)
    for k, scale in enumerate(t.scales):
        rows = t.cells[t.cells["scale"] == scale].set_index("scene").loc[list(t.scenes)]
        offset = (k - (len(t.scales) - 1) / 2) * width
        ax.errorbar(x + offset, rows["mos"], yerr=rows["half_width"].fillna(0.0), fmt="o", capsize=3, label=scale)
    ax.set_xticks(x, t.scenes)
    ax.set_ylabel("mean score")
    # The axis spans the whole scale: starting it near the data would make small differences look large. A CI
    # that leaves the scale stays visible above it.
    ax.set_ylim(low, max(high, float(np.nanmax(t.cells["ci_high"].to_numpy(float), initial=high)) + 0.05))
    ax.set_yticks(np.arange(np.ceil(low), np.floor(high) + 1))
    ax.set_title(f"Table 1 means with {t.ci_method.split(' ')[0]} CIs (screening: {t.screening})")
    ax.legend(ncols=len(t.scales), loc="lower center", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def distribution_figure(answers: pd.DataFrame):
    """Share of each rating value per scene, one panel per scale (stacked horizontal bars)."""
    scales = ordered(answers["scale"].astype("string").unique(), tuple(PAPER_SCALES))
    scenes = ordered(answers["scene"].astype("string").unique(), PAPER_SCENES)
    low, high = int(answers["scale_min"].min()), int(answers["scale_max"].max())
    values = np.arange(low, high + 1)
    fig = _figure(7.5, 1.2 + 1.1 * len(scales))
    axes = fig.subplots(len(scales), 1, sharex=True, squeeze=False)[:, 0]
    import matplotlib

    colours = matplotlib.colormaps["RdYlGn"](np.linspace(0.1, 0.9, values.size))
    for ax, scale in zip(axes, scales):
        rows = answers[answers["scale"].astype("string") == scale]
        share = pd.crosstab(rows["scene"].astype("string"), rows["value"].round().astype(int), normalize="index")
        share = share.reindex(index=list(scenes), columns=values, fill_value=0.0)
        left = np.zeros(len(scenes))
        for v, colour in zip(values, colours):
            ax.barh(scenes, share[v], left=left, color=colour, label=str(v))
            left += share[v].to_numpy()
        ax.set_ylabel(scale, rotation=0, ha="right", va="center")
        ax.invert_yaxis()
    axes[0].legend(ncols=values.size, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small", title="rating")
    axes[-1].set_xlabel("share of answers")
    return fig


def bias_figure(screened: ScreeningResult, answers: pd.DataFrame):
    """Each participant's bias (MLE b_s with CI, else the P.913 mean offset); BT.500 rejections in red."""
    if screened.method == "mle":
        table = screened.participants.rename(columns={"b_s": "bias"})
        err = np.vstack([table["bias"] - table["b_s_ci_low"], table["b_s_ci_high"] - table["bias"]])
        label = "MLE bias b_s (95 % CI)"
    else:
        table = p913_bias_removal(answers).participants
        err = None
        label = "P.913 bias (mean offset from presentation MOS)"
    order = np.argsort(table["bias"].to_numpy())
    table = table.iloc[order].reset_index(drop=True)
    if err is not None:
        err = err[:, order]
    rejected = set(screened.rejected)
    colours = ["tab:red" if str(p) in rejected else "tab:blue" for p in table["participant"]]
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    y = np.arange(len(table))
    ax.errorbar(y, table["bias"], yerr=err, fmt="none", ecolor="0.6", capsize=2)
    ax.scatter(y, table["bias"], c=colours, zorder=3)
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set_xticks(y, table["participant"].astype(str), rotation=90, fontsize="x-small")
    ax.set_ylabel(label)
    title = "per-participant bias"
    if rejected:
        title += f" (red: rejected by BT.500, {len(rejected)})"
    ax.set_title(title)
    return fig


def sos_figure(points: pd.DataFrame, fits: pd.DataFrame):
    """SOS against MOS of every presentation, one panel per scale, with the fitted SOS-hypothesis curve."""
    scales = list(fits["scale"])
    fig = _figure(2.4 * max(len(scales), 1) + 0.8, 2.8)
    axes = fig.subplots(1, max(len(scales), 1), squeeze=False, sharey=True)[0]
    for ax, row in zip(axes, fits.itertuples()):
        p = points[points["scale"].astype("string") == row.scale]
        low, high = float(p["scale_min"].min()), float(p["scale_max"].max())
        ax.scatter(p["mos"], p["sos"], s=8, alpha=0.6)
        grid = np.linspace(low, high, 200)
        if np.isfinite(row.a):
            ax.plot(grid, np.sqrt(row.a * (grid - low) * (high - grid)), color="tab:red", label=f"a = {row.a:.3f}")
            ax.legend(fontsize="x-small", loc="upper right")
        ax.plot(grid, np.sqrt((grid - low) * (high - grid)), color="0.7", linestyle=":", linewidth=0.8)
        ax.set_xlim(low, high)
        ax.set_ylim(bottom=0.0)
        ax.set_title(row.scale, fontsize="medium")
        ax.set_xlabel("MOS", fontsize="small")
    axes[0].set_ylabel("SOS (SD of ratings)")
    return fig


def ssq_figure(scores: pd.DataFrame):
    """SSQ scores before and after the session, one panel per score, each participant a grey line."""
    fig = _figure(8.0, 3.0)
    axes = fig.subplots(1, len(SUBSCALES), squeeze=False)[0]
    wide = scores.pivot_table(index=["participant", "session"], columns="phase", values=list(SUBSCALES), observed=True)
    for ax, score in zip(axes, SUBSCALES):
        if ("pre" in wide[score]) and ("post" in wide[score]):
            pairs = wide[score][["pre", "post"]].dropna()
            for _, row in pairs.iterrows():
                ax.plot([0, 1], [row["pre"], row["post"]], color="0.75", linewidth=0.8)
            ax.boxplot([pairs["pre"], pairs["post"]], positions=[0, 1], widths=0.35)
        ax.set_xticks([0, 1], ["pre", "post"])
        ax.set_title(score, fontsize="medium")
    axes[0].set_ylabel("weighted SSQ score")
    return fig


def heatmap_figure(poses: pd.DataFrame, thumbnails: Mapping[str, np.ndarray] | None = None):
    """Head-motion heat map of every scene over a thumbnail of one of its stimuli.

    Parameters
    ----------
    poses : pandas.DataFrame
        Pose samples (``scene, yaw_deg, pitch_deg``); empty when the study recorded none.
    thumbnails : mapping scene -> (h, w, 3) uint8, optional
        An equirect thumbnail per scene; a dark background is drawn where one is missing.

    Returns
    -------
    matplotlib.figure.Figure
        With a "no pose data" note instead of maps when ``poses`` is empty.

    Notes
    -----
    A scene with more than :data:`HEATMAP_MAX_SAMPLES` samples is thinned to that many evenly spaced
    samples before ``analysis.heatmap.viewing_heatmap`` is called at :data:`HEATMAP_SIZE`.
    """
    if poses is None or len(poses) == 0:
        fig = _figure(6.0, 1.2)
        fig.text(0.5, 0.5, NO_POSE_NOTE, ha="center", va="center", fontsize="large")
        return fig
    from analysis.heatmap import viewing_heatmap

    scenes = ordered(poses["scene"].astype("string").unique(), PAPER_SCENES)
    columns = 2 if len(scenes) > 1 else 1
    rows = int(np.ceil(len(scenes) / columns))
    fig = _figure(4.6 * columns, 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    extent = (-180.0, 180.0, -90.0, 90.0)
    for ax, scene in zip(axes, scenes):
        samples = poses[poses["scene"].astype("string") == scene]
        keep = np.unique(np.linspace(0, len(samples) - 1, min(len(samples), HEATMAP_MAX_SAMPLES)).round().astype(int))
        thinned = samples.iloc[keep]
        width, height = HEATMAP_SIZE
        density = viewing_heatmap(thinned["yaw_deg"].to_numpy(float), thinned["pitch_deg"].to_numpy(float),
                                  width=width, height=height)
        thumb = (thumbnails or {}).get(scene)
        if thumb is not None:
            ax.imshow(thumb, extent=extent, origin="upper", aspect="auto")
        else:
            ax.set_facecolor("0.15")
        # Per cent of the scene's samples per square degree, so panels of different sample counts compare.
        per_deg2 = density * 100.0 / ((360.0 / width) * (180.0 / height))
        image = ax.imshow(per_deg2, extent=extent, origin="upper", aspect="auto", cmap="inferno",
                          alpha=np.clip(density / density.max(), 0.0, 1.0) * 0.85)
        colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        colorbar.solids.set_alpha(1.0)
        colorbar.set_label("% of samples / deg²", fontsize="x-small")
        colorbar.ax.tick_params(labelsize="x-small")
        viewers = samples["participant"].nunique() if "participant" in samples.columns else 0
        ax.set_title(f"{scene}: {len(samples)} samples" + (f" of {viewers} participants" if viewers else ""),
                     fontsize="medium")
        ax.set_xticks([-180, -90, 0, 90, 180])
        ax.set_yticks([-90, 0, 90])
        ax.set_xlabel("yaw (°)", fontsize="small")
        ax.set_ylabel("pitch (°)", fontsize="small")
    for ax in axes[len(scenes):]:
        ax.set_visible(False)
    return fig


def _equirect_axes(ax, thumb, title: str) -> None:
    """An axis spanning the sphere (yaw −180..180, pitch −90..90) over a stimulus thumbnail (or dark)."""
    extent = (-180.0, 180.0, -90.0, 90.0)
    if thumb is not None:
        # dimmed, so that the map over it stands out
        ax.imshow((np.asarray(thumb, dtype=np.float64) * 0.5 + 20.0).astype(np.uint8), extent=extent, origin="upper",
                  aspect="auto")
    else:
        ax.set_facecolor("0.15")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks([-180, -90, 0, 90, 180])
    ax.set_yticks([-90, 0, 90])
    ax.tick_params(labelsize="x-small")
    ax.set_title(title, fontsize="small")


def _density_overlay(fig, ax, density: np.ndarray, label: str) -> None:
    """A saliency map (density per steradian) over the axis, transparent where it is low, with its colour bar
    in per cent of the map per square degree."""
    extent = (-180.0, 180.0, -90.0, 90.0)
    per_deg2 = density * 100.0 * (np.pi / 180.0) ** 2
    image = ax.imshow(per_deg2, extent=extent, origin="upper", aspect="auto", cmap="inferno",
                      alpha=np.clip(density / density.max(), 0.0, 1.0) * 0.85)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    colorbar.solids.set_alpha(1.0)
    colorbar.set_label(label, fontsize="x-small")
    colorbar.ax.tick_params(labelsize="x-small")


def saliency_figure(maps: Mapping[str, np.ndarray], thumbnails: Mapping[str, np.ndarray] | None, names: Mapping[str, str]):
    """The gaze saliency map of every stimulus over its thumbnail, two per row, each with its colour bar.

    ``maps`` are densities on the sphere (:func:`analysis.saliency.saliency_map`); ``names`` label the panels.
    """
    stimuli = list(maps)
    columns = 2 if len(stimuli) > 1 else 1
    rows = int(np.ceil(len(stimuli) / columns))
    fig = _figure(4.6 * columns, 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, stimulus in zip(axes, stimuli):
        _equirect_axes(ax, (thumbnails or {}).get(stimulus), names.get(stimulus, stimulus))
        _density_overlay(fig, ax, maps[stimulus], "% of fixations / deg²")
    for ax in axes[len(stimuli):]:
        ax.set_visible(False)
    return fig


def head_gaze_figure(maps: Mapping[str, tuple[np.ndarray, np.ndarray | None]], thumbnails: Mapping[str, np.ndarray] | None):
    """Per scene (rows): the head-only map (viewport centre, σ = 3.34°) and the gaze map (σ = 2°) side by side."""
    scenes = ordered(list(maps), PAPER_SCENES)
    fig = _figure(9.2, 2.4 * len(scenes))
    axes = fig.subplots(len(scenes), 2, squeeze=False)
    for (head_ax, gaze_ax), scene in zip(axes, scenes):
        gaze_map, head_map = maps[scene]
        thumb = (thumbnails or {}).get(scene)
        _equirect_axes(head_ax, thumb, f"{scene}: head (viewport centre)")
        if head_map is not None:
            _density_overlay(fig, head_ax, head_map, "% / deg²")
        else:
            head_ax.text(0, 0, "no head poses", ha="center", va="center", color="white")
        _equirect_axes(gaze_ax, thumb, f"{scene}: eye gaze (fixations)")
        _density_overlay(fig, gaze_ax, gaze_map, "% / deg²")
    return fig


def scanpath_figure(fixations: pd.DataFrame, thumbnails: Mapping[str, np.ndarray] | None, names: Mapping[str, str], *,
                    participants: int = 3, seconds: float = 8.0):
    """Scanpaths: for each stimulus, the first ``seconds`` of the fixations of its first ``participants``
    participants, numbered in order, marker area by duration, one colour per participant."""
    stimuli = list(dict.fromkeys(fixations["stimulus"].astype(str)))
    columns = 2 if len(stimuli) > 1 else 1
    rows = int(np.ceil(len(stimuli) / columns))
    fig = _figure(4.6 * columns, 2.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    colours = ("tab:cyan", "tab:orange", "tab:pink", "tab:olive", "tab:purple")
    for ax, stimulus in zip(axes, stimuli):
        of_stimulus = fixations[fixations["stimulus"].astype(str) == stimulus]
        codes = sorted(of_stimulus["participant"].astype(str).unique())[:participants]
        _equirect_axes(ax, (thumbnails or {}).get(stimulus), f"{names.get(stimulus, stimulus)}: first {seconds:g} s")
        for colour, code in zip(colours, codes):
            path = of_stimulus[(of_stimulus["participant"].astype(str) == code) & (of_stimulus["onset_s"] < seconds)]
            path = path.sort_values("onset_s")
            yaw, pitch = path["yaw_deg"].to_numpy(float), path["pitch_deg"].to_numpy(float)
            # a jump across the ±180° seam is drawn as a break, not as a line across the image
            broken = np.flatnonzero(np.abs(np.diff(yaw)) > 180.0) + 1
            for y, p in zip(np.split(yaw, broken), np.split(pitch, broken)):
                ax.plot(y, p, color=colour, linewidth=0.8, alpha=0.9)
            ax.scatter(yaw, pitch, s=12 + 60 * path["duration_s"].to_numpy(float), color=colour, edgecolors="black",
                       linewidths=0.4, label=code, zorder=3)
            for number, (y, p) in enumerate(zip(yaw, pitch), start=1):
                ax.annotate(str(number), (y, p), fontsize=5, ha="center", va="center", zorder=4)
        if codes:
            ax.legend(fontsize="xx-small", loc="lower left")
    for ax in axes[len(stimuli):]:
        ax.set_visible(False)
    return fig
