"""The one helper behind every configuration dataclass: a field that carries its help text.

Help text lives in ``metadata["help"]`` so that the CLI (``--help``) and ``ifguide run --explain``
print it from the same place the field is declared, as kronfluence's arguments do.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def help_field(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field with help text; a list or dict default is copied for each instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": text}, **kw)
    return dataclasses.field(default=default, metadata={"help": text}, **kw)
