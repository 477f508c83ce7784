"""Argument helpers shared by the verbs."""

from __future__ import annotations

import argparse

from ifguide.errors import InputError


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True, name: str = "--model") -> None:
    p.add_argument(name, required=required, help="Hugging Face hub id or local directory of a causal LM")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow custom modelling code from the model repository (off unless given)",
    )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``i/n`` (0 <= i < n) into a tuple; ``None`` passes through."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


def positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v
