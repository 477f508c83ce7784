"""A self-contained HTML page showing what selection picked and why.

For the top-ranked documents it prints the text token by token, each token's background
coloured by its influence score on a diverging scale (red: pushes towards toxic continuations,
blue: away), the score in a tooltip, and the selected tokens boxed and underlined. A histogram
of all finite scores (log y) marks the threshold tau. The page embeds everything (CSS inline,
the histogram as a base64 PNG), so it can be mailed or attached to a report.

:func:`render_inspector_html` returns the HTML *fragment* and :func:`histogram_png` the PNG, so
the pipeline report can embed them; :func:`inspect_selection` writes the full page.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ifguide.artifacts import require_fingerprint
from ifguide.errors import InputError
from ifguide.selection.masks import read_mask
from ifguide.selection.source import DEFAULT_CHUNK_ELEMENTS, ScoreSource, ScoresLike, open_scores

logger = logging.getLogger(__name__)

_CSS = """
.ifg-inspector { font-family: system-ui, sans-serif; max-width: 70em; }
.ifg-doc { margin: 1em 0; padding: .5em; border: 1px solid #ccc; border-radius: 4px; }
.ifg-doc h3 { font-size: 1em; margin: 0 0 .4em 0; }
.ifg-text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
.ifg-tok { border-radius: 2px; }
.ifg-nan { color: #999; }
.ifg-sel { outline: 2px solid #000; text-decoration: underline; font-weight: bold; }
.ifg-legend span { padding: 0 .4em; }
"""


def _colour(value: float, scale: float) -> str:
    """Diverging white-centred colour: red for positive scores, blue for negative."""
    import matplotlib

    if not np.isfinite(value):
        return "#eeeeee"
    t = 0.5 + 0.5 * float(np.clip(value / scale, -1.0, 1.0)) if scale > 0 else 0.5
    r, g, b, _ = matplotlib.colormaps["RdBu_r"](t)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _token_strings(tokenizer, ids: np.ndarray) -> list[str]:
    """Each token decoded on its own (byte-level pieces of a multi-byte character show as U+FFFD)."""
    return tokenizer.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False)


def _render_document(doc: int, tokens: list[str], scores: np.ndarray, mask: np.ndarray, scale: float, info: dict | None) -> str:
    parts = []
    for j, (text, score, selected) in enumerate(zip(tokens, scores, mask)):
        finite = bool(np.isfinite(score))
        tip = f"pos {j}: score {float(score):.4g}" if finite else f"pos {j}: no score"
        if selected:
            tip += " (selected)"
        classes = "ifg-tok" + (" ifg-sel" if selected else "") + ("" if finite else " ifg-nan")
        shown = html.escape(text.replace("\n", "\u21b5\n"))
        parts.append(f'<span class="{classes}" style="background:{_colour(score, scale)}" title="{html.escape(tip)}">{shown}</span>')
    head = f"block {doc}: {int(mask.sum())} tokens selected"
    if info is not None:
        head += f"; rank R={info['R']:.4f}, toxic tokens s={info['s']}, score sum f={info['f']:.4g}"
    return f'<div class="ifg-doc"><h3>{html.escape(head)}</h3><div class="ifg-text">{"".join(parts)}</div></div>'


def render_inspector_html(
    input_ids: np.ndarray,
    scores: np.ndarray | ScoreSource,
    mask: np.ndarray,
    tokenizer,
    documents: Sequence[int],
    *,
    tau: float | None = None,
    ranking: Sequence[dict] | None = None,
    histogram: bytes | None = None,
) -> str:
    """HTML fragment (a ``<div>`` with its own ``<style>``) showing ``documents`` (block rows).

    ``input_ids``, ``scores`` and ``mask`` are [N, T] arrays aligned in target coordinates (memory
    maps are fine: only the shown rows are read). ``ranking`` rows ``{doc, R, s, f}`` annotate the
    documents; ``histogram`` is a PNG from :func:`histogram_png`.
    """
    rows = [int(d) for d in documents]
    if isinstance(scores, ScoreSource):
        shown_scores = scores.take_rows(rows).astype(np.float64)
    else:
        shown_scores = np.asarray(scores[rows], dtype=np.float64).reshape(len(rows), -1)
    finite = shown_scores[np.isfinite(shown_scores)]
    # a robust scale: one extreme token should not wash every other colour out
    scale = float(np.quantile(np.abs(finite), 0.98)) if finite.size else 1.0
    if tau is not None and np.isfinite(tau):
        scale = max(scale, abs(float(tau)))
    by_doc = {int(r["doc"]): r for r in (ranking or [])}
    body = [f"<style>{_CSS}</style>", '<div class="ifg-inspector">']
    summary = f"{len(rows)} documents shown; colour scale +/-{scale:.4g}"
    if tau is not None:
        summary += f"; threshold tau = {float(tau):.4g}"
    body.append(
        f'<p>{html.escape(summary)}. <span class="ifg-legend">'
        f'<span style="background:{_colour(-scale, scale)}">negative</span>'
        f'<span style="background:{_colour(0.0, scale)}">zero</span>'
        f'<span style="background:{_colour(scale, scale)}">positive (toxic)</span>'
        f'<span class="ifg-sel">selected</span></span></p>'
    )
    if histogram is not None:
        b64 = base64.b64encode(histogram).decode()
        body.append(f'<img alt="histogram of scores" src="data:image/png;base64,{b64}"/>')
    for k, doc in enumerate(rows):
        tokens = _token_strings(tokenizer, np.asarray(input_ids[doc]))
        body.append(_render_document(doc, tokens, shown_scores[k], np.asarray(mask[doc], dtype=bool), scale, by_doc.get(doc)))
    body.append("</div>")
    return "\n".join(body)


def histogram_png(
    scores: ScoresLike | Sequence[ScoresLike], tau: float | None = None, *, bins: int = 100,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> bytes:
    """PNG of the histogram of the finite scores (log y) with tau marked; two chunked passes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    source = open_scores(scores)
    lo, hi = np.inf, -np.inf
    for _, chunk in source.iter_chunks(chunk_elements):
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo):
        raise InputError("scores: every score is NaN; nothing to plot")
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for _, chunk in source.iter_chunks(chunk_elements):
        counts += np.histogram(chunk[np.isfinite(chunk)].astype(np.float64), bins=edges)[0]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.stairs(counts, edges, fill=True, color="#777")
    ax.set_yscale("log")
    ax.set_xlabel("influence score")
    ax.set_ylabel("tokens")
    if tau is not None:
        ax.axvline(float(tau), color="#c00", linestyle="--", label=f"tau = {float(tau):.4g}")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _check_alignment(blocks, source, mask: np.ndarray, mask_meta: dict, mask_dir) -> None:
    """Refuse scores, mask and blocks that were not built from each other."""
    if tuple(source.shape) != tuple(blocks.shape):
        raise InputError(f"--scores: shape {source.shape} differs from the blocks' {blocks.shape}")
    if tuple(mask.shape) != tuple(blocks.shape):
        raise InputError(f"--mask {mask_dir}: shape {mask.shape} differs from the blocks' {blocks.shape}")
    if "blocks_fingerprint" in mask_meta:
        require_fingerprint(mask_meta["blocks_fingerprint"], blocks.fingerprint, what="blocks", where=f"--mask {mask_dir}")
    for m in source.metas():
        if "blocks_fingerprint" in m:
            require_fingerprint(m["blocks_fingerprint"], blocks.fingerprint, what="blocks", where="--scores")
    if "scores_fingerprint" in mask_meta:
        require_fingerprint(mask_meta["scores_fingerprint"], source.fingerprint(), what="scores", where=f"--mask {mask_dir}")


def _documents_to_show(mask: np.ndarray, meta: dict, top: int) -> list[int]:
    ranked = [int(r["doc"]) for r in meta.get("ranked_documents", [])][:top]
    if ranked:
        return ranked
    per_row = np.asarray(mask).sum(axis=1)  # control masks carry no ranking: most-selected rows first
    order = np.argsort(-per_row, kind="stable")
    return [int(i) for i in order[:top] if per_row[i] > 0]


def inspect_selection(
    blocks: str | os.PathLike,
    scores: ScoresLike | Sequence[ScoresLike],
    mask: str | os.PathLike,
    tokenizer,
    out: str | os.PathLike,
    *,
    top: int = 20,
    trust_remote_code: bool = False,
) -> Path:
    """``ifguide inspect``: write a self-contained HTML page for the top ``top`` documents."""
    from ifguide.data.blocks import Blocks
    from ifguide.models import fingerprint_tokenizer, load_tokenizer

    if top < 1:
        raise InputError(f"--top: expected a positive number of documents, got {top}")
    b = Blocks.open(blocks)
    source = open_scores(scores)
    mask_arr, meta = read_mask(mask)
    _check_alignment(b, source, mask_arr, meta, mask)
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    require_fingerprint(b.tokenizer_fingerprint, fingerprint_tokenizer(tok), what="tokenizer", where=f"--blocks {blocks}")

    docs = _documents_to_show(mask_arr, meta, top)
    tau = meta.get("tau")
    fragment = render_inspector_html(
        b.input_ids, source, mask_arr, tok, docs, tau=tau,
        ranking=meta.get("ranked_documents"), histogram=histogram_png(source, tau),
    )
    title = f"ifguide inspector: {Path(mask).name} ({meta.get('kind', 'mask')})"
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{fragment}\n</body></html>\n"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    logger.info("wrote %s (%d documents)", out, len(docs))
    return out

