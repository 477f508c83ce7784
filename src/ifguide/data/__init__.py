"""Corpus preparation: tokenizers, token blocks, query sets and the built-in demo world."""
