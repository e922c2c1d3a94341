"""Secrets and settings read from the environment, one name each, shared by the lab
(``python -m app``) and the survey (``python -m survey``):

    RCG_ADMIN_PASSWORD   the survey's admin password (results, votes, invitations), in the
                         lab and alone; unset = those are off
    RCG_LAB_PASSWORD     the lab pages' password (read by the lab only)
    RCG_SURVEY_DB        default --db of both (a URL may hold a database password)

Secrets belong in the environment, not on a command line, where other users of the
machine can read them (``ps``). Older names are still read, with a deprecation note
on standard error: ``SURVEY_ADMIN_PASSWORD`` (now ``RCG_ADMIN_PASSWORD``).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping

ADMIN_PASSWORD_ENV = "RCG_ADMIN_PASSWORD"
LAB_PASSWORD_ENV = "RCG_LAB_PASSWORD"
SURVEY_DB_ENV = "RCG_SURVEY_DB"
DEPRECATED = {"SURVEY_ADMIN_PASSWORD": ADMIN_PASSWORD_ENV}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def from_env(name: str, environ: Mapping[str, str] | None = None, note: Callable[[str], None] = _say) -> str | None:
    """The value of ``name`` (empty counts as unset), else of a deprecated name for it,
    with a note saying which name to use; None when neither is set."""
    environ = os.environ if environ is None else environ
    value = environ.get(name) or None
    for old, new in DEPRECATED.items():
        if new != name or not environ.get(old):
            continue
        if value is None:
            note(f"note: the environment variable {old} is deprecated; use {new} (same meaning, shared by the lab "
                 "and the survey)")
            value = environ[old]
        elif environ[old] != value:
            note(f"note: {old} (deprecated) is set and differs from {new}; using {new}")
    return value


def admin_password(given: str | None = None, environ: Mapping[str, str] | None = None,
                   note: Callable[[str], None] = _say) -> str | None:
    """The admin password: ``given`` (a command-line value, with a warning that ``ps``
    shows it) or the environment."""
    if given:
        note(f"warning: a password given with --admin-password can be read by other users of this machine (ps); "
             f"set {ADMIN_PASSWORD_ENV} instead")
        return given
    return from_env(ADMIN_PASSWORD_ENV, environ, note)


__all__ = ["ADMIN_PASSWORD_ENV", "DEPRECATED", "LAB_PASSWORD_ENV", "SURVEY_DB_ENV", "admin_password", "from_env"]
