"""Plumbing for sharded runs: ``--shard i/n`` jobs that share one work directory, then ``--merge``.

The shards of a job array run as independent processes, possibly on different machines with a
shared filesystem, and possibly at the same time. So, unlike the resumable single-job work dir
(:func:`ifguide.attribution._setup.open_work_dir`), the shared work dir is never discarded
behind another shard's back: a shard started with other inputs or options is refused. Files
that several shards would create are created once, atomically; everything else a shard writes
is its own (its partition, its rows, its completion marker), so re-running a shard never
touches another's files.

A shard is finished when its marker exists; markers are written last, after the shard's
results are on disk, so a killed shard counts as missing until it is re-run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifguide.artifacts import _jsonable, write_json
from ifguide.attribution._setup import REQUEST_FILE, _normalise, read_json
from ifguide.errors import InputError

MARKER_DIR = "done"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` independent jobs (``--shard index/count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"--shard: need 0 <= i < n, got {self.index}/{self.count}")

    @classmethod
    def of(cls, shard: Shard | tuple[int, int]) -> Shard:
        return shard if isinstance(shard, Shard) else cls(*shard)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def rows(self, n_rows: int) -> tuple[int, int]:
        """This shard's contiguous range ``[start, stop)`` of ``n_rows`` rows (sizes differ by at most one)."""
        return self.index * n_rows // self.count, (self.index + 1) * n_rows // self.count


def work_dir_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def create_json_once(path: Path, obj: Any) -> None:
    """Write ``path`` unless it exists; safe when several processes race to create it.

    The content is written to a private temporary file and hard-linked into place: the link
    either creates a complete file or fails because another process's complete file is there.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=2)
            f.write("\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def open_shared_work_dir(out: Path, request: dict, shard: Shard) -> Path:
    """The work dir ``OUT.partial/`` that all shards of one sharded run write into.

    The first shard records the request (with the shard count); later shards must match it.
    """
    work = work_dir_of(out)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER_DIR).mkdir(exist_ok=True)
    recorded = {**request, "shards": shard.count}
    create_json_once(work / REQUEST_FILE, recorded)
    _require_same_request(work, recorded)
    return work


def open_work_dir_for_merge(out: Path, request: dict) -> tuple[Path, int]:
    """The shared work dir of a sharded run of ``request`` and its shard count."""
    work = work_dir_of(out)
    request_path = work / REQUEST_FILE
    if not request_path.is_file():
        raise InputError(f"--merge: {work} holds no shards (run the shards with --shard i/n first)")
    count = read_json(request_path).get("shards")
    if not isinstance(count, int) or count < 1:
        raise InputError(f"--merge: {work} was not written by --shard jobs (no shard count in {REQUEST_FILE})")
    _require_same_request(work, {**request, "shards": count})
    return work, count


def _require_same_request(work: Path, recorded: dict) -> None:
    if read_json(work / REQUEST_FILE) != _normalise(recorded):
        raise InputError(
            f"{work}: holds shards of a run with other inputs, options or shard count. Use the same ones for "
            f"every shard and for --merge, or remove {work} to start over."
        )


def marker_path(work: Path, step: str, shard: Shard | None = None) -> Path:
    """Completion marker of a shard's ``step``, or (``shard=None``) of the merge of that step."""
    name = f"{step}-merged.json" if shard is None else f"{step}-{shard.index}-of-{shard.count}.json"
    return work / MARKER_DIR / name


def mark_done(work: Path, step: str, shard: Shard | None = None, **fields: Any) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(marker_path(work, step, shard), {"step": step, "shard": str(shard) if shard else None,
                                                "finished": now, **fields})


def is_done(work: Path, step: str, shard: Shard | None = None) -> bool:
    return marker_path(work, step, shard).is_file()


def require_all_done(work: Path, step: str, count: int, *, rerun_hint: str) -> None:
    """Refuse to merge while any shard of ``step`` has not finished, naming those shards."""
    missing = [Shard(i, count) for i in range(count) if not is_done(work, step, Shard(i, count))]
    if missing:
        names = ", ".join(str(s) for s in missing)
        raise InputError(
            f"--merge: {len(missing)} of {count} shards have not finished {step} in {work}: {names}. "
            f"Run (or re-run) them with {rerun_hint}, then --merge again."
        )
