"""Downstream accuracy through lm-evaluation-harness (``pip install lm_eval``, optional extra).

The model object is passed to the harness directly (``HFLM(pretrained=model, tokenizer=tok)``),
so nothing is re-loaded. Any harness task name works (online, or with the datasets cached).
For offline use ifguide ships task definitions that read local files
(``src/ifguide/resources/lm_eval``):

``ifguide_lambada``
    LAMBADA (OpenAI version) from a jsonl of ``{"text": ...}`` lines, scored like ``lambada_openai``.
``ifguide_mc``
    Multiple choice from a jsonl of ``{"query": str, "choices": [str, ...], "label": int}`` lines.

Their data file is given per task, ``{"ifguide_mc": "PATH.jsonl"}`` (CLI: ``--lm-eval-data
ifguide_mc=PATH``); the YAMLs are copied to a temporary folder with the path filled in.
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

from ifguide.errors import InputError

logger = logging.getLogger(__name__)

DATA_PLACEHOLDER = "__DATA__"


def local_tasks() -> dict[str, str]:
    """Name -> YAML text of the task definitions shipped with ifguide."""
    folder = resources.files("ifguide") / "resources" / "lm_eval"
    return {p.name.removesuffix(".yaml"): p.read_text() for p in folder.iterdir() if p.name.endswith(".yaml")}


def _write_local_tasks(tasks: list[str], data: dict[str, str], folder: Path) -> None:
    shipped = local_tasks()
    for task in tasks:
        if task not in shipped:
            continue
        if task not in data:
            raise InputError(f"--lm-eval-tasks: {task} reads a local file; give it with --lm-eval-data {task}=PATH")
        path = Path(data[task]).resolve()
        if not path.is_file():
            raise InputError(f"--lm-eval-data: {path}: no such file")
        (folder / f"{task}.yaml").write_text(shipped[task].replace(DATA_PLACEHOLDER, str(path)))


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    data: dict[str, str | os.PathLike] | None = None,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict[str, dict[str, float]]:
    """Run harness tasks; returns ``{task: {metric: value}}`` (e.g. ``acc``, ``acc_norm``, ``perplexity``)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise InputError("--lm-eval-tasks needs lm-evaluation-harness: pip install 'lm_eval>=0.4.5'") from None
    data = {k: str(v) for k, v in (data or {}).items()}
    unknown_data = set(data) - set(tasks)
    if unknown_data:
        raise InputError(f"--lm-eval-data: {sorted(unknown_data)} not among --lm-eval-tasks {tasks}")
    only_local = all(t in local_tasks() for t in tasks)
    with tempfile.TemporaryDirectory(prefix="ifguide-lm-eval-") as folder:
        _write_local_tasks(tasks, data, Path(folder))
        manager = TaskManager(include_path=folder, include_defaults=not only_local)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False, bootstrap_iters=0
            )
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise InputError(f"--lm-eval-tasks {','.join(tasks)}: the harness refused them ({type(e).__name__}: {e})") from None
    results = {}
    for task in tasks:
        raw = out["results"].get(task)
        if raw is None:
            raise InputError(f"--lm-eval-tasks: the harness returned no result for {task!r}")
        results[task] = {
            k.split(",")[0]: float(v)
            for k, v in raw.items()
            if "," in k and "stderr" not in k and isinstance(v, (int, float))
        }
    return results


def parse_task_data(items: list[str] | None) -> dict[str, str]:
    """``["task=PATH", ...]`` -> ``{task: PATH}``."""
    out = {}
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise InputError(f"--lm-eval-data: expected TASK=PATH, got {item!r}")
        out[task] = path
    return out
