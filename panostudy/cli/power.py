"""`panostudy power`: how many participants a study needs to detect a MOS difference (paired t-test)."""

from __future__ import annotations

from typing import Annotated

import typer

from panostudy.cli._console import console


def register(app: typer.Typer) -> None:
    """Adds ``power`` to the root app."""

    @app.command("power")
    def power(
        delta: Annotated[float, typer.Option("--delta", help="Smallest MOS difference worth detecting (scale points).")],
        sd: Annotated[float, typer.Option("--sd", help="SD of the participants' paired differences (scale points).")],
        comparisons: Annotated[int, typer.Option("--comparisons", help="Pairs compared (4 scenes: 6).")] = 1,
        target: Annotated[float, typer.Option("--power", help="Probability of detecting each difference.")] = 0.8,
        alpha: Annotated[float, typer.Option("--alpha", help="Family-wise error rate over all comparisons.")] = 0.05,
    ) -> None:
        """A-priori number of participants for paired comparisons (uncorrected, Bonferroni, Holm)."""
        from rich.table import Table

        from analysis.power import participants_needed

        plan = participants_needed(delta, sd, comparisons, power=target, alpha=alpha)
        table = Table(title=f"Participants needed: ΔMOS {delta:g}, SD {sd:g} (d = {delta / sd:.3f}), {comparisons} "
                            f"comparison(s), power {target:g}, family-wise α {alpha:g}",
                      caption="Paired two-sided t-test per comparison; Holm by simulation with every comparison "
                              "differing by ΔMOS, independently.")
        for column in ("correction", "α per test", "participants", "power reached"):
            table.add_column(column, justify="left" if column == "correction" else "right")
        for row in plan.itertuples():
            table.add_row(row.correction, row.alpha_per_test, str(row.n), f"{row.power:.3f}")
        console.print(table)
