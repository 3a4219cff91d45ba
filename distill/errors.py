"""User-facing errors: one line naming the problem and the fix, exit code 2.

Library code raises `DistillError(problem, fix)`; the CLI prints `error: <problem> (fix: <fix>)` and
exits 2 without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USAGE = 2


class DistillError(Exception):
    """A problem the user can fix. `problem` says what is wrong, `fix` what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = _cap(" ".join(self.problem.split()), MAX_PROBLEM)
        if self.fix:
            text += f" (fix: {_cap(' '.join(self.fix.split()), MAX_FIX)})"
        return text


# An error line is read by a person: a problem that quotes a 5,000-character list or file hides
# the one fact that matters. Lists are capped where they are built (`short_list`); this is the net.
MAX_PROBLEM, MAX_FIX, MAX_LISTED = 400, 400, 12


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def short_list(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    """'a, b, c' for at most `limit` items, then '... (N more)'."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid spelling of `name`, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_choice(what: str, name: str, choices: Iterable[str]) -> DistillError:
    """Error for an unknown id/kind/key, suggesting the closest valid one and listing the rest."""
    choices = sorted(choices)
    guess = closest(name, choices)
    hint = f"did you mean '{guess}'? " if guess else ""
    return DistillError(f"unknown {what} '{name}'", f"{hint}valid: {short_list(choices, 40)}")
