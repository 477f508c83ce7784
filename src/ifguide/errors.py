"""Errors that reach the user.

Every problem with what the user gave us (a missing file, a malformed record, a mask
built for other blocks) is raised as :class:`InputError`. The CLI turns it into a
one-line message on stderr and exit code 2; library users can catch it like any
``ValueError``.
"""

from __future__ import annotations

EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """Bad input from the user: names the file/field and what was expected."""


class FingerprintMismatch(InputError):
    """An artifact was built from different inputs than the ones given now."""


class TrainingDiverged(RuntimeError):
    """Training stopped because the loss became non-finite or ran past its guard."""
