"""The command line: verbs listed, and the foundation's end-to-end smoke path."""

from __future__ import annotations

import subprocess
import sys

from ifguide.artifacts import read_meta
from ifguide.cli import main


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "ifguide.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("tokenizer", "init-model", "prepare", "train"):
        assert verb in out


def test_tokenizer_init_prepare_train_end_to_end(tmp_path, corpus_path):
    tok, model, blocks, trained = (str(tmp_path / n) for n in ("tok", "model", "blocks", "trained"))
    assert main(["tokenizer", "train", "--data", corpus_path, "--vocab-size", "300", "--out", tok]) == 0
    assert main(["init-model", "--arch", "llama", "--preset", "micro", "--tokenizer", tok, "--out", model]) == 0
    assert main(["prepare", "--data", corpus_path, "--tokenizer", tok, "--block-size", "16", "--out", blocks]) == 0
    assert main(["train", "--model", model, "--blocks", blocks, "--out", trained, "--max-steps", "5", "--batch-size", "4"]) == 0
    meta = read_meta(trained, stage="model")
    assert meta["blocks_fingerprint"] == read_meta(blocks)["fingerprint"]
    assert meta["steps"] == 5


def test_blocks_from_another_tokenizer_are_refused(tmp_path, corpus_path, model_dir, capsys):
    other_tok, blocks = str(tmp_path / "tok2"), str(tmp_path / "b2")
    assert main(["tokenizer", "train", "--data", corpus_path, "--vocab-size", "280", "--out", other_tok]) == 0
    assert main(["prepare", "--data", corpus_path, "--tokenizer", other_tok, "--block-size", "16", "--out", blocks]) == 0
    assert main(["train", "--model", model_dir, "--blocks", blocks, "--out", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
