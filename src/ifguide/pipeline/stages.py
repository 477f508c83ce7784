"""Cached, kill-safe pipeline stages.

A stage is a directory under the run directory, built by a function that writes it atomically
(every ifguide artifact is built in a temporary directory and renamed into place). After it
succeeds, the stage's *key* — a fingerprint of its configuration and of its inputs' own
fingerprints — is written to ``stage.json`` inside it. A later run skips the stage when the key
matches and rebuilds it (and, because keys chain through fingerprints, everything downstream of
it) when anything it depends on changed. A kill at any moment leaves either the old artifact,
the new one without ``stage.json`` (rebuilt next time), or the finished stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ifguide.artifacts import clean_stale_temporaries, fingerprint_json, read_meta, write_json

logger = logging.getLogger("ifguide.pipeline")

STAGE_FILE = "stage.json"


def artifact_fingerprint(path: str | Path) -> str:
    """The ``fingerprint`` an artifact recorded in its meta.json (or a key of its stage)."""
    meta = read_meta(path)
    return meta.get("fingerprint") or fingerprint_json(meta.get("args"))


class StageRunner:
    """Runs stages in order, skipping those whose key is unchanged, and times them."""

    def __init__(self, root: str | Path, force: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    def path(self, name: str) -> Path:
        return self.root / name

    def run(self, name: str, key: dict[str, Any], build: Callable[[Path], Any]) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        digest = fingerprint_json(key)
        stage_file = path / STAGE_FILE
        if not self.force and stage_file.is_file():
            recorded = json.loads(stage_file.read_text())
            if recorded.get("key") == digest:
                self.seconds[name] = recorded.get("seconds", 0.0)
                self.skipped.append(name)
                logger.info("[%s] unchanged, reusing %s", name, path)
                return path
        logger.info("[%s] running ...", name)
        t0 = time.perf_counter()
        build(path)
        seconds = time.perf_counter() - t0
        write_json(stage_file, {"key": digest, "seconds": seconds, "inputs": key})
        self.seconds[name] = seconds
        logger.info("[%s] done in %.1f s", name, seconds)
        return path
