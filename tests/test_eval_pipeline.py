"""evaluate() end to end on a micro model: sampling, results.json, recomputation, CLI, compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import build_model, write_jsonl
from ifguide.cli import main
from ifguide.errors import InputError
from ifguide.evaluation.compare import compare, paired_bootstrap, write_comparison
from ifguide.evaluation.evaluate import EvalConfig, evaluate, recompute_results
from ifguide.evaluation.generation import SamplingConfig, sample_continuations
from ifguide.models import load_model, load_tokenizer

PROMPTS = [
    {"prompt": {"text": "The old bridge", "toxicity": 0.1}},
    {"prompt": {"text": "shut up you", "toxicity": 0.9}},
    {"prompt": "A farmer visited the market and", "toxic": True},
]
SMALL = dict(samples=3, max_new_tokens=5, seeds=(1, 2), batch_size=6, bootstrap=200)


@pytest.fixture(scope="module")
def prompts_path(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", PROMPTS)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, model_dir, prompts_path):
    out = tmp_path_factory.mktemp("eval") / "base"
    evaluate(model_dir, prompts_path, out, EvalConfig(scorer="profanity-check", **SMALL))
    return out


def test_sampling_arguments_reach_generate_batched(model_dir):
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    calls = []
    original = model.generate

    def recording_generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.generate = recording_generate
    prompts = [p["prompt"]["text"] if isinstance(p["prompt"], dict) else p["prompt"] for p in PROMPTS]
    cfg = SamplingConfig(samples=4, max_new_tokens=6, top_p=0.8, batch_size=8)  # 2 prompts per call
    out = sample_continuations(model, tok, prompts, cfg, seed=3)
    assert [len(group) for group in out] == [4, 4, 4]
    assert len(calls) == 2  # batched over prompts, not one call per sample
    for kw in calls:
        assert kw["do_sample"] is True and kw["top_p"] == 0.8 and kw["top_k"] == 0
        assert kw["max_new_tokens"] == 6 and kw["num_return_sequences"] == 4 and kw["use_cache"] is True
    mask = calls[0]["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padding of the shorter prompt
    assert tok.padding_side == "right" or tok.padding_side == load_tokenizer(model_dir).padding_side
    again = sample_continuations(model, tok, prompts, cfg, seed=3)
    assert again == out  # a seed reproduces


def test_results_schema_and_recompute(eval_dir):
    results = json.loads((eval_dir / "results.json").read_text())
    assert json.loads((eval_dir / "meta.json").read_text())["stage"] == "eval"
    tox = results["toxicity"]
    assert tox["full"]["n_prompts"] == 3 and tox["toxic"]["n_prompts"] == 2 and tox["nontoxic"]["n_prompts"] == 1
    for subset in ("full", "toxic", "nontoxic"):
        for m in ("emt", "tp", "toxic_rate"):
            stat = tox[subset][m]
            assert set(stat) == {"mean", "sd", "ci95"} and 0 <= stat["mean"] <= 1 and len(stat["ci95"]) == 2
    assert results["ppl"] is None and results["lambada"] is None and results["accuracy"] is None
    assert results["acc_mean"] is None and results["seeds"] == [1, 2] and len(results["per_seed"]) == 2
    assert results["model_fingerprint"] and results["prompts"]["n_toxic"] == 2
    assert 0 < tox["full"]["emt"]["mean"] < 1 and tox["full"]["emt"]["sd"] > 0  # real, varying scores
    lines = (eval_dir / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3
    rec = json.loads(lines[0])
    assert len(rec["continuations"]) == 3 and len(rec["scores"]["toxicity"]) == 3
    again = recompute_results(eval_dir / "generations.jsonl", n_boot=200)
    for key in ("toxicity", "attributes", "per_seed"):
        assert json.loads(json.dumps(again[key])) == results[key]
    # and the per-seed numbers match a direct computation from the stored scores
    seed1 = [json.loads(x) for x in lines if json.loads(x)["seed"] == 1]
    emt = np.mean([max(r["scores"]["toxicity"]) for r in seed1])
    assert results["per_seed"][0]["toxicity"]["full"]["emt"] == pytest.approx(emt)


def test_cli_evaluate_with_fluency_and_bad_inputs(tmp_path, model_dir, blocks_dir, prompts_path, corpus_path, capsys):
    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "the river crossed the valley"}, {"text": "a young cat"}])
    out = tmp_path / "ev"
    rc = main([
        "evaluate", "--model", model_dir, "--prompts", prompts_path, "--out", str(out), "--scorer", "profanity-check",
        "--samples", "2", "--max-new-tokens", "4", "--seeds", "5", "--ppl-data", blocks_dir, "--lambada", lambada,
    ])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert math.isfinite(results["ppl"]) and results["ppl"] > 1 and results["lambada"]["n"] == 2
    assert results["toxicity"]["full"]["emt"]["sd"] is None  # one seed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 5}\n')
    assert main(["evaluate", "--model", model_dir, "--prompts", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["evaluate", "--model", model_dir, "--prompts", prompts_path, "--out", str(tmp_path / "y"), "--seeds", "1,a"]) == 2
    assert main(["evaluate", "--model", model_dir, "--prompts", prompts_path, "--out", str(tmp_path / "y"), "--scorer", "nope"]) == 2
    # fluency inputs are checked before any sampling
    assert main(["evaluate", "--model", model_dir, "--prompts", prompts_path, "--out", str(tmp_path / "y"), "--ppl-data", str(tmp_path)]) == 2
    assert "not a blocks directory" in capsys.readouterr().err


def test_compare_paired_bootstrap_table_and_plot(tmp_path, tokenizer_dir, model_dir, prompts_path, eval_dir):
    other_dir = tmp_path / "other_model"
    build_model(tokenizer_dir, seed=1).save_pretrained(other_dir)
    load_tokenizer(tokenizer_dir).save_pretrained(other_dir)
    dirs = [eval_dir]
    for name, model in (("other", other_dir), ("same", model_dir)):
        evaluate(model, prompts_path, tmp_path / name, EvalConfig(scorer="profanity-check", **SMALL))
        dirs.append(tmp_path / name)
    table = compare(dirs, ["base", "other", "same"], baseline="base", control="other", n_boot=200)
    assert [r["method"] for r in table.rows] == ["base", "other", "same"]
    same = table.rows[2]["vs_base"]["emt_full"]
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0], "significant": False}  # same model, same seeds
    assert "vs_other" in table.rows[0] and "vs_base" not in table.rows[0]
    md = table.to_markdown()
    assert "| Method | EMT Full | TP Full | EMT Toxic | TP Toxic | PPL | Acc |" in md and "Paired bootstrap vs other" in md
    write_comparison(table, tmp_path / "t" / "table.md", tmp_path / "t" / "plot.png")
    assert (tmp_path / "t" / "table.csv").read_text().startswith("method,emt_full_mean")
    assert (tmp_path / "t" / "plot.png").stat().st_size > 1000
    assert main(["compare", *map(str, dirs), "--out", str(tmp_path / "c.md"), "--names", "a,b,c", "--baseline", "zz"]) == 2
    evaluate(model_dir, prompts_path, tmp_path / "seed9", EvalConfig(scorer="profanity-check", **{**SMALL, "seeds": (9, 2)}))
    with pytest.raises(InputError, match="different seeds"):
        compare([eval_dir, tmp_path / "seed9"])


def test_paired_bootstrap_detects_a_shift():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    shifted = paired_bootstrap(base - 0.1 + rng.normal(0, 0.01, 200), base)
    assert shifted["significant"] and shifted["ci95"][1] < 0 and shifted["diff"] == pytest.approx(-0.1, abs=0.01)
    assert paired_bootstrap(np.array([]), np.array([])) is None
