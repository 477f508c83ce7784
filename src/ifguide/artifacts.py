"""Stage artifacts: directories with a ``meta.json`` that later stages check.

Every stage of the pipeline (blocks, model, factors, scores, mask, eval, ...) writes one
directory. It is built under a temporary sibling name and renamed into place only when
complete, so a crash or a kill never leaves a half-written artifact under the final name.
``meta.json`` records the stage, the arguments, the fingerprints of the inputs, this
artifact's own fingerprint and the library versions; :func:`read_meta` and
:func:`require_fingerprint` let a consumer refuse inputs that were built from something else.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ifguide.errors import FingerprintMismatch, InputError

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
_HASH_CHUNK_BYTES = 1 << 24


def library_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes an artifact."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("ifguide", "torch", "transformers", "tokenizers", "numpy", "kronfluence", "trl", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks (works for files larger than RAM)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_array(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and contents; streams over a memmap row chunk by row chunk."""
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{tuple(arr.shape)}|".encode())
    if arr.ndim == 0 or arr.shape[0] == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
    row_bytes = max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    rows = max(1, _HASH_CHUNK_BYTES // row_bytes)
    for start in range(0, arr.shape[0], rows):
        h.update(np.ascontiguousarray(arr[start : start + rows]).tobytes())
    return h.hexdigest()


def fingerprint_json(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename); NaN/inf become null."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_meta(directory: str | os.PathLike, stage: str, **fields: Any) -> dict:
    """Write ``meta.json`` for a stage; adds versions and a timestamp. Returns the dict written."""
    meta = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **fields,
    }
    write_json(Path(directory) / META_NAME, meta)
    return meta


def read_meta(directory: str | os.PathLike, stage: str | None = None) -> dict:
    """Read and sanity-check ``meta.json`` of an artifact directory."""
    directory = Path(directory)
    path = directory / META_NAME
    if not directory.exists():
        raise InputError(f"{directory}: no such directory")
    if not path.is_file():
        raise InputError(f"{directory}: not an ifguide artifact (missing {META_NAME})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None
    if stage is not None and meta.get("stage") != stage:
        raise InputError(f"{directory}: expected a '{stage}' artifact, found stage '{meta.get('stage')}'")
    return meta


def require_fingerprint(expected: str | None, actual: str | None, *, what: str, where: str) -> None:
    """Refuse an input whose fingerprint differs from the one an artifact was built for."""
    if expected is None or actual is None or expected != actual:
        raise FingerprintMismatch(
            f"{where}: {what} fingerprint mismatch (artifact was built for {str(expected)[:16]}..., "
            f"given {str(actual)[:16]}...). Rebuild it from the same inputs."
        )


@contextlib.contextmanager
def artifact_dir(out: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Build an artifact directory atomically.

    Yields a fresh temporary directory beside ``out``. On normal exit it replaces ``out``
    (an old ``out`` is removed only after the new one is complete); on any exception the
    temporary directory is deleted and ``out`` is left untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temporaries(parent: str | os.PathLike) -> None:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` leftovers of killed runs under ``parent``."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for p in parent.glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in parent.glob(".*.old-*"):
        shutil.rmtree(p, ignore_errors=True)
