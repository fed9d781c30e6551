"""The ``panostudy`` command.

Commands are thin: they parse arguments, call library functions and render results. Each command module
imports torch, diffusers and OpenGL inside its functions so that ``panostudy --help`` stays light.

Every failure a user can cause ends here as one line on stderr and exit code 2 (:mod:`panostudy.cli._errors`
says which failures those are); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

#: Files and folders the command creates are the owner's only: studies hold participant data.
PRIVATE_UMASK = 0o077

#: Narrower than this, rich's option tables cut long option names ("--panorama-mode…"); click's plain help,
#: one option a line with its help wrapped beside it, stays readable at 80 columns.
RICH_HELP_MIN_WIDTH = 100


def _tidy_help(command, plain: bool) -> None:
    """Every flag without a value placeholder (typer shows ``<bool>``, yet a flag takes no value), and plain help
    on a narrow terminal; for ``command`` and every command under it."""
    if plain:
        command.rich_markup_mode = None
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub, plain)


class _OneLineErrors(TyperGroup):
    """Runs a command with a private umask and turns every user-caused failure into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = sys.argv[1:] if args is None else list(args)
        from panostudy.cli._console import console

        _tidy_help(self, plain=console.width < RICH_HELP_MIN_WIDTH)
        previous = os.umask(PRIVATE_UMASK)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            code = 1
        except Exception as exc:  # noqa: BLE001  (sorted below: user errors become a line, bugs re-raise)
            code = _report(exc, args)
        finally:
            os.umask(previous)
        if standalone_mode:
            sys.exit(code or 0)
        return code


def _report(exc: Exception, args: list[str]) -> int:
    """Shows a user-caused failure on stderr and returns exit code 2; re-raises a bug."""
    from panostudy.cli._errors import user_error_line

    if type(exc).__name__ == "NoArgsIsHelpError":  # `panostudy study` alone: the group's help
        # With rich help, building the message has printed it already and left the message empty.
        if exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        return 2
    line = user_error_line(exc, args)
    if line is None:
        raise exc
    from rich.markup import escape

    from panostudy.cli._console import err_console

    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return 2


app = typer.Typer(
    cls=_OneLineErrors,
    name="panostudy",
    help="VR subjective studies of generated 360° panoramas: generate stimuli, run participants, analyse ratings.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register_commands() -> None:
    from panostudy.cli import analyze, demo, generate, power, replay, session, study_cmd, view

    for module in (study_cmd, session, generate, view, analyze, power, replay, demo):
        module.register(app)


_register_commands()


def main() -> None:
    app()
