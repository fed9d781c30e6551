"""The ``panostudy`` command.

Commands are thin: they parse arguments, call library functions and render results. Each command module
imports torch, diffusers and OpenGL inside its functions so that ``panostudy --help`` stays light.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from study.errors import PanostudyError


class _OneLineErrors(TyperGroup):
    """Turns a :class:`PanostudyError` from any subcommand into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PanostudyError as exc:
            from rich.markup import escape

            from panostudy.cli._console import err_console

            # escaped: messages name TOML tables such as [panel], which rich would take for markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_OneLineErrors,
    name="panostudy",
    help="VR subjective studies of generated 360° panoramas: generate stimuli, run participants, analyse ratings.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register_commands() -> None:
    from panostudy.cli import analyze, demo, generate, session, study_cmd, view

    for module in (study_cmd, session, generate, view, analyze, demo):
        module.register(app)


_register_commands()


def main() -> None:
    app()
