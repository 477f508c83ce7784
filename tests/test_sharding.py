"""Sharded factors and scores (``--shard i/n`` jobs, then ``--merge``) against single-job runs.

Shards run one after another in this process, exactly as independent job-array tasks would run
them (each call loads its inputs afresh and shares only ``OUT.partial/``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TOXIC, write_jsonl
from ifguide.cli import main

SAFE = ["the river crossed the valley at dawn", "a farmer visited a quiet garden"]


@pytest.fixture(scope="module")
def queries_path(tmp_path_factory):
    recs = [{"prompt": "The market", "continuation": f" {t}", "label": "toxic"} for t in TOXIC]
    recs += [{"prompt": "Our teacher", "continuation": f" {s}", "label": "safe"} for s in SAFE]
    return write_jsonl(tmp_path_factory.mktemp("queries") / "q.jsonl", recs)


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def error_message(capsys) -> str:
    """The CLI's one-line error (stderr also carries progress bars)."""
    return "\n".join(line for line in capsys.readouterr().err.splitlines() if line.startswith("ifguide "))


def tensors(factors_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((factors_dir / "kronfluence").glob("*.safetensors")):
        for module, t in load_file(f).items():
            out[f"{f.stem}/{module}"] = t.double()
    return out


def eigen_clusters(eigenvalues: torch.Tensor, rel_gap: float = 1e-4) -> list[slice]:
    """Runs of (ascending) eigenvalues closer than ``rel_gap`` x the largest: their eigenvectors
    are only defined up to a rotation inside the run (the null space of a rank-deficient
    covariance is one such run)."""
    gap = rel_gap * float(eigenvalues.abs().max())
    jumps = [j for j in range(1, len(eigenvalues)) if eigenvalues[j] - eigenvalues[j - 1] > gap]
    cuts = [0, *jumps, len(eigenvalues)]
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


def assert_same_factors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Equal EK-FAC factors, compared where they are uniquely defined.

    Covariances, example counts and eigenvalues elementwise. Eigenvectors through the projector
    onto each eigenspace, ``V_S V_S^T``. Lambda (the corrected eigenvalues, squared projections of
    per-example gradients on the eigenbasis) through its sums over pairs of eigenspaces, which are
    squared Frobenius norms of projections and so do not depend on the basis chosen inside them.
    """
    for name in expected:
        if name.split("/")[0] in ("activation_eigenvectors", "gradient_eigenvectors", "lambda_matrix"):
            continue
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    clusters = {}
    for name in (k for k in expected if k.split("/")[0].endswith("_eigenvectors")):
        kind, module = name.split("/")
        clusters[kind.split("_")[0], module] = eigen_clusters(expected[f"{kind.split('_')[0]}_eigenvalues/{module}"])
        for s in clusters[kind.split("_")[0], module]:
            e, g = expected[name][:, s], got[name][:, s]
            torch.testing.assert_close(g @ g.T, e @ e.T, rtol=0, atol=1e-4, msg=f"{name} eigenspace {s}")
    for name in (k for k in expected if k.startswith("lambda_matrix/")):
        module = name.split("/")[1]
        rows, cols = clusters["gradient", module], clusters["activation", module]

        def block_sums(lam: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[float(lam[r, c].sum()) for c in cols] for r in rows], dtype=torch.float64)

        torch.testing.assert_close(block_sums(got[name]), block_sums(expected[name]), rtol=1e-4,
                                   atol=1e-6 * float(expected[name].sum()), msg=name)


# ------------------------------------------------------------------------------------------ factors


def test_sharded_factors_equal_single_job_factors(tmp_path, model_dir, blocks_dir, queries_path, capsys):
    args = ["--model", model_dir, "--blocks", blocks_dir, "--max-blocks", "24", "--batch-size", "6"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["fit-factors", *args, "--out", str(single)]) == 0

    fit = ["fit-factors", *args, "--out", str(sharded)]
    work = tmp_path / "sharded.partial"
    assert main([*fit, "--shard", "0/2", "--phase", "lambda"]) == 2  # covariance not merged yet
    assert "--merge --phase covariance" in error_message(capsys)
    assert main([*fit, "--shard", "0/2", "--phase", "covariance"]) == 0
    assert main([*fit, "--merge", "--phase", "covariance"]) == 2  # shard 1 is missing
    assert "have not finished covariance" in error_message(capsys) and not sharded.exists()
    assert main([*fit, "--shard", "1/2", "--phase", "covariance"]) == 0
    assert main([*fit, "--merge", "--phase", "covariance"]) == 0

    assert main([*fit, "--shard", "1/2", "--phase", "lambda"]) == 0
    assert main([*fit, "--merge"]) == 2
    err = error_message(capsys)
    assert err.endswith(" 0/2. Run (or re-run) them with --shard i/2 --phase lambda, then --merge again.")

    # Shard 0 is killed while saving its partition: a truncated file and no completion marker.
    factors_dir = work / "kronfluence" / "factors_ifguide"
    assert main([*fit, "--shard", "0/2", "--phase", "lambda"]) == 0
    own = sorted(factors_dir.glob("lambda_matrix_data_partition0_*.safetensors"))
    other_before = {k: v for k, v in snapshot(factors_dir).items() if "partition1" in k}
    own[0].write_bytes(b"truncated")
    (work / "done" / "lambda-0-of-2.json").unlink()
    assert main([*fit, "--shard", "0/2", "--phase", "lambda"]) == 0  # re-run of the killed shard
    assert main([*fit, "--shard", "1/2", "--phase", "lambda"]) == 0  # finished: nothing to do
    assert {k: v for k, v in snapshot(factors_dir).items() if "partition1" in k} == other_before
    assert main([*fit, "--merge"]) == 0
    assert not work.exists()

    meta_single = json.loads((single / "meta.json").read_text())
    meta_sharded = json.loads((sharded / "meta.json").read_text())
    assert meta_sharded["shards"] == 2
    for key in ("strategy", "modules", "n_blocks_fitted", "model_fingerprint", "blocks_fingerprint"):
        assert meta_sharded[key] == meta_single[key]
    expected, got = tensors(single), tensors(sharded)
    assert set(got) == set(expected) and any(k.startswith("lambda_matrix/") for k in got)
    assert_same_factors(expected, got)

    # The sharded factors are consumed by `score` like the single-job ones.
    score = ["score", "--model", model_dir, "--blocks", blocks_dir, "--queries", queries_path, "--batch-size", "64"]
    assert main([*score, "--factors", str(single), "--out", str(tmp_path / "s1")]) == 0
    assert main([*score, "--factors", str(sharded), "--out", str(tmp_path / "s2")]) == 0
    a, b = np.load(tmp_path / "s1" / "scores.npy"), np.load(tmp_path / "s2" / "scores.npy")
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(a)))


# ------------------------------------------------------------------------------------------- scores


@pytest.fixture(scope="module")
def identity_factors(tmp_path_factory, model_dir, blocks_dir):
    out = tmp_path_factory.mktemp("factors") / "identity"
    assert main(["fit-factors", "--model", model_dir, "--blocks", blocks_dir, "--out", str(out),
                 "--strategy", "identity"]) == 0
    return str(out)


def test_sharded_scores_equal_single_job_scores(tmp_path, model_dir, blocks_dir, queries_path, identity_factors,
                                                monkeypatch, capsys):
    import ifguide.attribution.scores as scores_mod
    from ifguide.selection.source import open_scores

    score = ["score", "--model", model_dir, "--blocks", blocks_dir, "--queries", queries_path,
             "--factors", identity_factors, "--batch-size", "16", "--chunk-blocks", "40"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main([*score, "--out", str(single)]) == 0
    run = [*score, "--out", str(sharded)]
    work = tmp_path / "sharded.partial"

    assert main([*run, "--merge"]) == 2  # nothing to merge yet
    assert main([*run, "--shard", "0/2"]) == 0
    shard0 = snapshot(work / "shard-0-of-2")

    # Shard 1 fails in its second chunk: the error reaches the caller, and --merge names the shard.
    real, calls = scores_mod._score_chunk, []

    def fail_second_chunk(analyzer, query_ds, rows, chunk, config, block_size):
        calls.append(chunk)
        if chunk == 1:
            raise RuntimeError("node lost")
        return real(analyzer, query_ds, rows, chunk, config, block_size)

    monkeypatch.setattr(scores_mod, "_score_chunk", fail_second_chunk)
    with pytest.raises(RuntimeError, match="node lost"):
        main([*run, "--shard", "1/2"])
    capsys.readouterr()
    assert main([*run, "--merge"]) == 2
    assert error_message(capsys).endswith(": 1/2. Run (or re-run) them with --shard i/2, then --merge again.")
    assert not sharded.exists()
    monkeypatch.setattr(scores_mod, "_score_chunk", real)

    calls.clear()
    monkeypatch.setattr(scores_mod, "_score_chunk", lambda *a: calls.append(a[3]) or real(*a))
    assert main([*run, "--shard", "1/2"]) == 0  # resumes at its unfinished chunk
    assert calls == [1]
    assert main([*run, "--shard", "0/2"]) == 0  # finished: nothing recomputed
    assert calls == [1] and snapshot(work / "shard-0-of-2") == shard0

    # The finished shard directories are row shards `select` accepts as they are.
    shard_dirs = [work / "shard-0-of-2", work / "shard-1-of-2"]
    from_shards = open_scores(shard_dirs).to_array()

    assert main([*run, "--merge"]) == 0
    assert not work.exists()
    expected, got = np.load(single / "scores.npy"), np.load(sharded / "scores.npy")
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(expected)))
    assert np.array_equal(from_shards, got, equal_nan=True)

    meta_single = json.loads((single / "meta.json").read_text())
    meta_sharded = json.loads((sharded / "meta.json").read_text())
    skip = {"created", "fingerprint"}  # the same content otherwise, the same request fingerprint included
    assert {k: v for k, v in meta_sharded.items() if k not in skip} == {
        k: v for k, v in meta_single.items() if k not in skip
    }
    if np.array_equal(got, expected, equal_nan=True):
        assert meta_sharded["fingerprint"] == meta_single["fingerprint"]


def test_shards_refuse_other_options_and_bad_flags(tmp_path, model_dir, blocks_dir, queries_path, identity_factors,
                                                   capsys):
    score = ["score", "--model", model_dir, "--blocks", blocks_dir, "--queries", queries_path,
             "--factors", identity_factors, "--out", str(tmp_path / "s"), "--chunk-blocks", "200"]
    assert main([*score, "--shard", "0/3"]) == 0
    assert main([*score, "--shard", "1/2"]) == 2  # another shard count in the same work dir
    assert main([*score, "--shard", "1/3", "--alignment", "same"]) == 2  # other options
    assert "remove" in error_message(capsys)
    assert main([*score, "--shard", "3/3"]) == 2
    assert main([*score, "--shard", "0/3", "--merge"]) == 2
    fit = ["fit-factors", "--model", model_dir, "--blocks", blocks_dir, "--out", str(tmp_path / "f")]
    assert main([*fit, "--shard", "0/2"]) == 2  # which phase?
    assert main([*fit, "--phase", "lambda"]) == 2  # phase without --shard/--merge
