"""Train a byte-level BPE tokenizer offline with the ``tokenizers`` library."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

from ifguide.errors import InputError

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(
    data: Iterable[str | os.PathLike] | None = None,
    vocab_size: int = 8192,
    out: str | os.PathLike | None = None,
    *,
    texts: Iterable[str] | None = None,
    line_docs: bool = False,
    min_frequency: int = 2,
):
    """Train a byte-level BPE tokenizer on the documents of ``data`` (paths) or ``texts``.

    The result is a ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as BOS/EOS/UNK and a
    separate ``<|pad|>`` token; it is saved to ``out`` (atomically) when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ifguide.artifacts import artifact_dir, sha256_file, write_meta
    from ifguide.data.readers import iter_documents, resolve_sources
    from ifguide.models import fingerprint_tokenizer

    if vocab_size < 260:
        raise InputError(f"--vocab-size: must be at least 260 (256 bytes + specials), got {vocab_size}")
    if (data is None) == (texts is None):
        raise InputError("train_tokenizer: give exactly one of data paths or texts")
    sources = resolve_sources(data) if data is not None else []

    def corpus() -> Iterator[str]:
        source = texts if texts is not None else (d.text for d in iter_documents(sources, line_docs=line_docs))
        n = 0
        for text in source:
            n += 1
            yield text
        if n == 0:
            raise InputError("tokenizer training: the corpus has no documents")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD
    )
    if out is not None:
        with artifact_dir(out) as tmp:
            fast.save_pretrained(tmp)
            write_meta(
                tmp,
                "tokenizer",
                args={"vocab_size": vocab_size, "line_docs": line_docs, "min_frequency": min_frequency},
                inputs={s.name: (sha256_file(s.name) if s.local else "hf-dataset") for s in sources},
                fingerprint=fingerprint_tokenizer(fast),
                vocab_size=len(fast),
            )
        logger.info("trained a %d-token byte-level BPE tokenizer -> %s", len(fast), out)
    return fast
