"""Errors that reach the user as one line and exit code 2 (bad input) or 1 (failed)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReproError(Exception):
    """Bad input: the CLI prints the message as one line and exits with 2."""

    exit_code = 2


class RunFailed(ReproError):
    """The thing asked for ran and failed: exit code 1."""

    exit_code = 1


def nearest(name: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.4)
    return match[0] if match else None


def unknown(kind: str, name: str, choices: Iterable[str]) -> ReproError:
    """`unknown recipe 'tulu-8b'; did you mean 'tulu3-8b'? (valid: ...)`."""
    choices = sorted(choices)
    guess = nearest(name, choices)
    hint = f"; did you mean {guess!r}?" if guess else ""
    listing = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return ReproError(f"unknown {kind} {name!r}{hint} (valid: {listing})")
