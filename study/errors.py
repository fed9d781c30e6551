"""Errors that reach the user as one line.

Every module of panostudy raises a subclass of :class:`PanostudyError` for bad input. The CLI prints its
message on one line and exits with code 2; nothing is written before the check that raises it. A message
names the file, field or argument, says what was wrong and how to fix it.
"""

from __future__ import annotations


class PanostudyError(Exception):
    """Bad input or state that the user can fix; its message is shown as is."""


class ProtocolError(PanostudyError):
    """A protocol TOML file is malformed or inconsistent."""


class StoreError(PanostudyError):
    """The study database cannot be opened, is of another schema version, or refuses a write."""


class StimulusError(PanostudyError):
    """A stimulus image is missing, unreadable, not 2:1 equirectangular or too large."""


class SessionError(PanostudyError):
    """An answer or command does not fit the session's current state."""


class SceneSpecError(PanostudyError):
    """A scene spec or mask file is malformed or inconsistent."""


class BackendUnavailable(PanostudyError):
    """A viewer backend cannot run here; ``why_not`` says why."""

    def __init__(self, name: str, why_not: str):
        super().__init__(f"viewer backend '{name}' is unavailable: {why_not}")
        self.name = name
        self.why_not = why_not


class AnalysisError(PanostudyError):
    """The ratings cannot be analysed as asked (no answers, out-of-range values, ...)."""
