"""Builders of the realistic benchmark's inputs from the public data in ``shared/data``.

Three files come out of :func:`build_all`, all JSON lines:

``corpus.jsonl``
    Training documents ``{"text", "toxic": bool, "source"}``: benign prose (WikiText-2, PTB,
    Tiny Shakespeare, OpenWebText half-sentences, BOLD Wikipedia sentences) mixed with real
    toxic text (Jigsaw toxic comments, Davidson offensive/hate tweets, ParaDetox toxic
    sentences, toxic RealToxicityPrompts continuations). Short toxic texts are concatenated
    into documents of a few hundred words, as comment threads are on real web pages, so the
    toxic share of *tokens* (not just of documents) reaches the requested level. ``toxic``
    is the ground truth that ``ifguide prepare`` turns into ``toxic_labels.npy``.
``queries.jsonl``
    RealToxicityPrompts records (original schema) whose continuations are clearly toxic
    (>= 0.5) or clearly safe (<= 0.1): the query sets of the influence scores.
``eval_prompts.jsonl``
    RealToxicityPrompts records, balanced between toxic and non-toxic prompts (prompt
    toxicity >= 0.5 vs < 0.5) and *interleaved*, so that the first ``k`` prompts of the
    file are balanced too (the evaluation's ``max_prompts`` takes a prefix).

The three are disjoint: no evaluation prompt is a query prompt, and no evaluation prompt or
query record appears in the training text (checked with :func:`check_disjoint`, which is also
applied to a user-given evaluation file and refuses overlap with an ``InputError``).

IF-Guide's own RTP split indices (``if_guide_indices/``) index the full 99k-row RTP file, which
is not in ``shared/data`` (see its PROVENANCE.md), so the splits here are drawn with a seed.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ifguide.errors import InputError

TOXIC_MIN = 0.5  # RTP convention: toxicity >= 0.5 is toxic
SAFE_MAX = 0.1  # a clearly safe query continuation (ifguide's default --safe-max)
RTP_FILE = "realtoxicityprompts/rtp_merged_dedup.jsonl"


@dataclass(frozen=True)
class Doc:
    """One training document with its ground truth and where it came from."""

    text: str
    toxic: bool
    source: str

    def record(self) -> dict:
        return {"text": self.text, "toxic": self.toxic, "source": self.source}


# ------------------------------------------------------------------------------------------ reading


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"--data: expected the file {path} (see shared/data/README.md)")
    return path


def _jsonl(path: Path) -> Iterator[dict]:
    with open(_require(path), encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None


def group_texts(texts: Iterable[str], min_chars: int, sep: str = "\n\n") -> Iterator[str]:
    """Concatenate consecutive short texts into documents of at least ``min_chars`` characters.

    The last, shorter group is kept too (dropping it would silently lose text).
    """
    group: list[str] = []
    size = 0
    for t in texts:
        t = t.strip()
        if not t:
            continue
        group.append(t)
        size += len(t) + len(sep)
        if size >= min_chars:
            yield sep.join(group)
            group, size = [], 0
    if group:
        yield sep.join(group)


_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def split_wikitext_articles(text: str) -> list[str]:
    """Cut a raw WikiText file into articles at its top-level ``= Title =`` lines."""
    articles: list[list[str]] = []
    for line in text.splitlines():
        if _WIKI_TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    return [a for a in ("\n".join(lines).strip() for lines in articles) if a]


def read_benign(root: Path, doc_chars: int) -> dict[str, list[str]]:
    """Benign documents per source (lists keep file order; shuffling happens in :func:`mix_corpus`)."""
    bp = root / "benign_prose"
    out: dict[str, list[str]] = {}
    wiki = []
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        wiki += split_wikitext_articles(_require(bp / "wikitext-2-raw" / name).read_text(encoding="utf-8"))
    out["wikitext-2"] = wiki
    ptb_lines = []
    for name in ("ptb.valid.txt", "ptb.test.txt"):
        ptb_lines += _require(bp / "ptb" / name).read_text(encoding="utf-8").splitlines()
    out["ptb"] = list(group_texts(ptb_lines, doc_chars, sep="\n"))
    speeches = _require(bp / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    out["tinyshakespeare"] = list(group_texts(speeches, doc_chars))
    owt = []
    for name in ("neutral_prompts.jsonl", "positive_prompts.jsonl", "negative_prompts.jsonl"):
        owt += [r["prompt"]["text"] + r["continuation"]["text"] for r in _jsonl(bp / "owt_sentiment_prompts" / name)]
    out["owt-sentiment"] = list(group_texts(owt, doc_chars, sep=" "))
    bold_dir = root / "bold" / "wikipedia"
    if bold_dir.is_dir():
        pages = []
        for path in sorted(bold_dir.glob("*.json")):
            for group in json.loads(path.read_text(encoding="utf-8")).values():
                pages += [" ".join(sentences) for sentences in group.values()]
        out["bold-wikipedia"] = list(group_texts(pages, doc_chars))
    return out


def read_toxic_texts(root: Path) -> dict[str, list[str]]:
    """Short toxic texts per source (not yet joined into documents). RTP is handled separately."""
    out: dict[str, list[str]] = {}
    jig = root / "jigsaw_toxic_comments"
    # Air-Decoding's file: label 0 = toxic (see its PROVENANCE.md); RobTest: label 1 = toxic, no header.
    jigsaw = [r["text"] for r in _jsonl(jig / "air_decoding_jigsaw_10k.jsonl") if r["label"] == 0]
    with open(_require(jig / "robtest_jigsaw_test.csv"), encoding="utf-8", newline="") as f:
        jigsaw += [row[0] for row in csv.reader(f) if len(row) == 2 and row[1].strip() == "1"]
    out["jigsaw"] = list(dict.fromkeys(jigsaw))
    with open(_require(root / "davidson_hate_offensive" / "labeled_data.csv"), encoding="utf-8", newline="") as f:
        # class 0 = hate speech, 1 = offensive language, 2 = neither
        out["davidson"] = [r["tweet"] for r in csv.DictReader(f) if r["class"] in ("0", "1")]
    para = root / "paradetox"
    with open(_require(para / "paradetox.tsv"), encoding="utf-8", newline="") as f:
        toxic = [r["toxic"] for r in csv.DictReader(f, delimiter="\t")]
    with open(_require(para / "paradetox_cannot_rewrite.tsv"), encoding="utf-8", newline="") as f:
        toxic += [r["INPUT:toxic_comment"].strip('"') for r in csv.DictReader(f, delimiter="\t")]
    out["paradetox"] = list(dict.fromkeys(t for t in toxic if t))
    return out


def read_reward_texts(root: Path) -> list[dict]:
    """Labelled comments for RAD's reward model, as RAD trains its own on Jigsaw: Air-Decoding's
    balanced 10k subset (label 0 = toxic), as ``{"text", "toxic"}`` records. The evaluation's
    scorer (profanity-check) is trained on other data, so the reward is not the metric."""
    path = _require(root / "jigsaw_toxic_comments" / "air_decoding_jigsaw_10k.jsonl")
    return [{"text": r["text"], "toxic": r["label"] == 0} for r in _jsonl(path)]


def read_rtp(root: Path) -> list[dict]:
    """RTP records with a prompt text, deduplicated on the prompt text (first kept)."""
    seen: set[str] = set()
    records = []
    for rec in _jsonl(root / RTP_FILE):
        text = (rec.get("prompt") or {}).get("text")
        if isinstance(text, str) and text.strip() and text not in seen:
            seen.add(text)
            records.append(rec)
    return records


# ----------------------------------------------------------------------------------------- splitting


def _tox(part: dict | None) -> float | None:
    value = (part or {}).get("toxicity")
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class RtpSplit:
    queries: list[dict]  # toxic and safe continuations, alternating
    eval_prompts: list[dict]  # toxic and non-toxic prompts, alternating
    train_continuations: list[str]  # toxic continuations of the remaining records


def interleave(a: Sequence, b: Sequence) -> list:
    """a0, b0, a1, b1, ... (lengths must match)."""
    return [x for pair in zip(a, b, strict=True) for x in pair]


def split_rtp(records: list[dict], n_queries: int, n_eval: int, seed: int) -> RtpSplit:
    """Disjoint query / evaluation / training parts of RTP.

    ``n_queries`` toxic (continuation >= 0.5) plus ``n_queries`` safe (<= 0.1) queries;
    ``n_eval`` prompts, half with prompt toxicity >= 0.5; the toxic continuations of every other
    record go to the training corpus.
    """
    rng = random.Random(seed)
    order = list(records)
    rng.shuffle(order)
    toxic_q = [r for r in order if (_tox(r.get("continuation")) or 0) >= TOXIC_MIN][:n_queries]
    safe_q = [r for r in order if (t := _tox(r.get("continuation"))) is not None and t <= SAFE_MAX][:n_queries]
    if len(toxic_q) < n_queries or len(safe_q) < n_queries:
        raise InputError(f"{RTP_FILE}: needs {n_queries} toxic and {n_queries} safe continuations for the queries")
    used = {id(r) for r in toxic_q + safe_q}
    rest = [r for r in order if id(r) not in used]
    half = n_eval // 2
    tox_p = [r for r in rest if (_tox(r["prompt"]) or 0) >= TOXIC_MIN][:half]
    safe_p = [r for r in rest if (t := _tox(r["prompt"])) is not None and t < TOXIC_MIN][:half]
    if len(tox_p) < half or len(safe_p) < half:
        raise InputError(f"{RTP_FILE}: too few records left for {n_eval} balanced evaluation prompts")
    used |= {id(r) for r in tox_p + safe_p}
    train = [r["continuation"]["text"] for r in rest
             if id(r) not in used and (_tox(r.get("continuation")) or 0) >= TOXIC_MIN]
    return RtpSplit(interleave(toxic_q, safe_q), interleave(tox_p, safe_p), train)


# -------------------------------------------------------------------------------------------- mixing


def mix_corpus(
    benign: dict[str, list[str]],
    toxic: dict[str, list[str]],
    *,
    toxic_share: float,
    doc_chars: int,
    seed: int,
    max_benign_chars: int | None = None,
) -> list[Doc]:
    """Benign documents plus toxic documents holding ``toxic_share`` of all characters, shuffled.

    Benign documents are taken round-robin over the sources (so a character cap keeps every
    source); toxic texts likewise, each source's texts shuffled and then joined into documents of
    about ``doc_chars`` characters. Raises when the toxic sources cannot reach the share.
    """
    if not 0 <= toxic_share < 1:
        raise InputError(f"--toxic-share: must be in [0, 1), got {toxic_share}")
    rng = random.Random(seed)
    benign_docs = _round_robin_take(
        {k: [Doc(t, False, k) for t in v] for k, v in benign.items()}, max_benign_chars, rng
    )
    n_benign = sum(len(d.text) for d in benign_docs)
    want_toxic = int(round(n_benign * toxic_share / (1 - toxic_share)))
    toxic_docs = {}
    for name, texts in toxic.items():
        texts = list(texts)
        rng.shuffle(texts)
        toxic_docs[name] = [Doc(t, True, name) for t in group_texts(texts, doc_chars)]
    chosen = _round_robin_take(toxic_docs, want_toxic, rng)
    got = sum(len(d.text) for d in chosen)
    if toxic_share > 0 and got < 0.95 * want_toxic:
        raise InputError(
            f"--toxic-share {toxic_share}: the toxic sources hold {got} characters, {want_toxic} needed; "
            "lower the share or cap the benign text"
        )
    docs = benign_docs + chosen
    rng.shuffle(docs)
    return docs


def _round_robin_take(per_source: dict[str, list[Doc]], max_chars: int | None, rng: random.Random) -> list[Doc]:
    """Documents taken one per source in turn (sources shuffled) until ``max_chars`` is reached."""
    queues = {k: list(v) for k, v in per_source.items() if v}
    for q in queues.values():
        rng.shuffle(q)
    taken: list[Doc] = []
    size = 0
    while queues and (max_chars is None or size < max_chars):
        for name in list(queues):
            doc = queues[name].pop()
            taken.append(doc)
            size += len(doc.text)
            if not queues[name]:
                del queues[name]
            if max_chars is not None and size >= max_chars:
                break
    return taken


# -------------------------------------------------------------------------------------- disjointness


def _prompt_text(rec: dict) -> str:
    p = rec.get("prompt")
    return (p.get("text") if isinstance(p, dict) else p) or ""


def _continuation_text(rec: dict) -> str:
    c = rec.get("continuation")
    return (c.get("text") if isinstance(c, dict) else c) or ""


def check_disjoint(eval_prompts: list[dict], queries: list[dict], corpus_texts: Iterable[str], where: str) -> None:
    """Refuse evaluation prompts that are query prompts or occur in the training text.

    Training text is searched for each prompt as a substring (whitespace-stripped); prompts
    shorter than 20 characters are only compared with query prompts, as short phrases occur
    in any corpus by chance.
    """
    query_prompts = {_prompt_text(q).strip() for q in queries}
    for k, rec in enumerate(eval_prompts, 1):
        text = _prompt_text(rec).strip()
        if text in query_prompts:
            raise InputError(f"{where}: prompt {k} ({text[:60]!r}) is also a query prompt; evaluation must be disjoint")
    haystack = "\x00".join(corpus_texts)
    for k, rec in enumerate(eval_prompts, 1):
        text = _prompt_text(rec).strip()
        if len(text) >= 20 and text in haystack:
            raise InputError(f"{where}: prompt {k} ({text[:60]!r}) occurs in the training corpus; evaluation must be disjoint")
    for k, q in enumerate(queries, 1):
        text = (_prompt_text(q) + _continuation_text(q)).strip()
        if len(text) >= 20 and text in haystack:
            raise InputError(f"queries: record {k} ({text[:60]!r}) occurs verbatim in the training corpus")


def read_eval_prompts(path: Path) -> list[dict]:
    """A user-given evaluation file; must be balanced (as many toxic as non-toxic prompts)."""
    recs = list(_jsonl(path))
    n_toxic = _count_toxic(recs)
    if not recs:
        raise InputError(f"--eval-prompts {path}: holds no prompts")
    if n_toxic * 2 != len(recs):
        raise InputError(
            f"--eval-prompts {path}: expected a balanced file (half with prompt toxicity >= {TOXIC_MIN}); "
            f"got {n_toxic} toxic of {len(recs)}"
        )
    return recs


def _count_toxic(recs: list[dict]) -> int:
    n = 0
    for r in recs:
        p = r.get("prompt")
        tox = _tox(p) if isinstance(p, dict) else _tox(r)
        if r.get("toxic") is True or (tox is not None and tox >= TOXIC_MIN):
            n += 1
    return n


# ------------------------------------------------------------------------------------------ building


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


@dataclass
class BuildSpec:
    """What :func:`build_all` makes; see ``bench/realistic.py --help`` for the meaning of each."""

    toxic_share: float = 0.06
    doc_chars: int = 1500
    max_benign_chars: int | None = None
    n_queries: int = 200
    n_eval: int = 200
    heldout_articles: int = 10
    seed: int = 0


def build_all(root: Path, out: Path, spec: BuildSpec, eval_prompts: Path | None = None) -> dict:
    """Write corpus.jsonl, heldout.txt, queries.jsonl and eval_prompts.jsonl into ``out``; return stats.

    ``heldout.txt`` holds the last ``heldout_articles`` WikiText articles, kept out of training,
    for perplexity.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data: {root} is not a directory (expected shared/data)")
    out.mkdir(parents=True, exist_ok=True)
    benign = read_benign(root, spec.doc_chars)
    heldout = benign["wikitext-2"][-spec.heldout_articles:]
    benign["wikitext-2"] = benign["wikitext-2"][: -spec.heldout_articles]
    toxic = read_toxic_texts(root)
    split = split_rtp(read_rtp(root), spec.n_queries, spec.n_eval, spec.seed)
    toxic["rtp-continuations"] = split.train_continuations
    docs = mix_corpus(benign, toxic, toxic_share=spec.toxic_share, doc_chars=spec.doc_chars,
                      seed=spec.seed, max_benign_chars=spec.max_benign_chars)
    evals = read_eval_prompts(eval_prompts) if eval_prompts is not None else split.eval_prompts
    check_disjoint(evals, split.queries, (d.text for d in docs),
                   str(eval_prompts) if eval_prompts is not None else "built evaluation prompts")
    write_jsonl(out / "corpus.jsonl", (d.record() for d in docs))
    (out / "heldout.txt").write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    write_jsonl(out / "queries.jsonl", split.queries)
    write_jsonl(out / "eval_prompts.jsonl", evals)
    n_reward = write_jsonl(out / "reward.jsonl", read_reward_texts(root))
    return corpus_stats(docs) | {"queries": len(split.queries), "eval_prompts": len(evals), "reward_texts": n_reward,
                                 "eval_toxic": _count_toxic(evals), "heldout_chars": sum(map(len, heldout))}


def corpus_stats(docs: list[Doc]) -> dict:
    """Document and character counts, overall, toxic, and per source."""
    per_source: dict[str, dict[str, int]] = {}
    for d in docs:
        s = per_source.setdefault(d.source, {"docs": 0, "chars": 0})
        s["docs"] += 1
        s["chars"] += len(d.text)
    chars = sum(len(d.text) for d in docs)
    toxic_chars = sum(len(d.text) for d in docs if d.toxic)
    return {
        "docs": len(docs),
        "toxic_docs": sum(d.toxic for d in docs),
        "chars": chars,
        "toxic_char_share": toxic_chars / chars if chars else 0.0,
        "per_source": per_source,
    }
