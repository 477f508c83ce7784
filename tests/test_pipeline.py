"""`ifguide run`: config validation, an end-to-end run on a micro world, and resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import write_jsonl
from ifguide.cli import main
from ifguide.errors import InputError
from ifguide.pipeline.config import config_from_dict, load_config


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_path):
    d = tmp_path_factory.mktemp("world")
    toxic = [{"prompt": "The sailor said", "continuation": " you stupid idiot", "label": "toxic"},
             {"prompt": "Then he yelled", "continuation": " shut up you moron", "label": "toxic"}]
    safe = [{"prompt": "The sailor said", "continuation": " the old bridge", "label": "safe"},
            {"prompt": "Then he yelled", "continuation": " a quiet garden", "label": "safe"}]
    prompts = [{"prompt": {"text": "Then he yelled", "toxicity": 0.9}}, {"prompt": {"text": "The river", "toxicity": 0.0}},
               {"prompt": {"text": "A farmer", "toxicity": 0.1}}]
    return {
        "corpus": corpus_path,
        "queries_toxic": write_jsonl(d / "qt.jsonl", toxic),
        "queries_safe": write_jsonl(d / "qs.jsonl", safe),
        "prompts": write_jsonl(d / "prompts.jsonl", prompts),
    }


def micro_config(world, **overrides) -> dict:
    cfg = {
        "methods": ["base", "ifguide", "random"],
        "data": {"corpus": [world["corpus"]], "heldout": world["corpus"], "block_size": 32},
        "tokenizer": {"vocab_size": 300},
        "model": {"arch": "gpt-neox", "preset": "micro"},
        "train": {"max_steps": 20, "lr": 3e-3, "batch_size": 8, "logging_steps": 5},
        "attribution": {"queries_toxic": world["queries_toxic"], "queries_safe": world["queries_safe"],
                        "strategy": "ekfac", "batch_size": 16, "ablations": ["toxic-only"]},
        "selection": {"budget": 0.05},
        "evaluation": {"prompts": world["prompts"], "samples": 4, "max_new_tokens": 5, "seeds": [1, 2]},
    }
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float"),
        ({"methods": ["base", "magic"]}, "unknown ['magic']"),
        ({"methods": ["ifguide"]}, "'base' is required"),
        ({"setting": "sometimes"}, "setting"),
        ({"selection": {"windw": 1}}, "selection.windw: unknown key"),
    ],
)
def test_config_errors_name_the_key(world, patch, message):
    data = micro_config(world)
    for k, v in patch.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_bad_yaml_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {corpus: [x]\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_explain_lists_every_section(capsys):
    assert main(["run", "--explain"]) == 0
    out = capsys.readouterr().out
    for key in ("data:", "attribution:", "selection:", "evaluation:", "budget:", "queries_toxic:"):
        assert key in out


ALL_METHODS = ["base", "ifguide", "random", "oracle", "toxic-only", "document", "unlikelihood", "remove",
               "filter-scorer", "filter-influence", "filter-oracle", "dpo", "rad", "ifguide+rad", "proxy"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, world):
    """One run with every method: each must appear as a row computed from its own results."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    cfg_path = run_dir.parent / "config.yaml"
    cfg = micro_config(world, methods=ALL_METHODS,
                       attribution={"proxy": {"arch": "llama", "preset": "micro", "init_seed": 1}},
                       dpo={"steps": 4, "batch_size": 2}, evaluation={"rad_k": 5})
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(cfg_path), "--out", str(run_dir)]) == 0
    return run_dir, cfg_path


def test_end_to_end_writes_summary_report_and_every_stage(finished_run):
    run_dir, _ = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["methods"]) == ALL_METHODS
    table = (run_dir / "compare" / "table.md").read_text()
    evals = {m: summary["methods"][m]["eval"] for m in ALL_METHODS}
    assert len(set(evals.values())) == len(ALL_METHODS)  # every row from its own results.json
    for m in ALL_METHODS:
        assert f"| {m} |" in table
        assert json.loads((run_dir / "eval" / m / "results.json").read_text())["decoding"]["method"] == (
            "rad" if m.endswith("rad") else "plain")
    # the filtering baselines drop at least IF-Guide's token budget, and train on fewer blocks
    for m in ("filter-scorer", "filter-influence"):
        rows = json.loads((run_dir / "models" / m / "meta.json").read_text())["args"]["rows"]
        assert rows["n_rows"] < json.loads((run_dir / "blocks" / "meta.json").read_text())["n_blocks"]
    # the perfect filter trains on exactly the blocks without labelled toxicity
    labels = np.load(run_dir / "blocks" / "toxic_labels.npy")
    clean = np.flatnonzero(~labels[:, 1:].any(axis=1)).tolist()
    assert json.loads((run_dir / "models" / "filter-oracle" / "meta.json").read_text())["args"]["rows"]["n_rows"] == len(clean)
    assert np.load(run_dir / "rows" / "filter-oracle" / "rows.npy").tolist() == clean
    for m, e in summary["methods"].items():
        for sub in ("full", "toxic", "nontoxic"):
            assert 0.0 <= e[sub]["emt"] <= 1.0 and 0.0 <= e[sub]["tp"] <= 1.0
        assert e["ppl"] > 1.0
    assert summary["methods"]["base"]["attribution"] is None
    q = summary["methods"]["ifguide"]["attribution"]
    assert 0.0 <= q["precision"] <= 1.0 and 0.0 <= q["recall"] <= 1.0
    assert summary["methods"]["toxic-only"]["attribution"]["n_selected"] > 0  # an ablation trained as a method
    assert summary["methods"]["oracle"]["attribution"]["strict_precision"] == 1.0
    # the random control has exactly as many tokens as IF-Guide's selection
    assert summary["methods"]["random"]["attribution"]["n_selected"] == q["n_selected"]
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table" in html
    assert 'src="http' not in html and "<link" not in html  # self-contained: viewable offline
    assert "Influence scores are those of the final base model." in html
    for stage in ("tokenizer", "blocks", "heldout", "models/base", "factors", "scores/differential",
                  "masks/ifguide", "masks/random", "models/ifguide", "eval/base", "eval/random"):
        assert (run_dir / stage / "meta.json").is_file(), stage
        assert (run_dir / stage / "stage.json").is_file(), stage


def test_rerun_reuses_everything_and_a_change_reruns_downstream(finished_run, world):
    from ifguide.artifacts import read_meta
    from ifguide.pipeline.run import run_pipeline

    run_dir, cfg_path = finished_run
    before = json.loads((run_dir / "summary.json").read_text())
    old_mask = read_meta(run_dir / "masks" / "ifguide")["fingerprint"]
    again = run_pipeline(load_config(cfg_path), run_dir)
    assert set(again["reused_stages"]) >= {"tokenizer", "blocks", "models/base", "factors", "masks/ifguide", "eval/ifguide"}
    assert again["methods"]["ifguide"]["full"] == before["methods"]["ifguide"]["full"]

    # a window of 0 selects other tokens: the mask and everything downstream of it is rebuilt
    changed = config_from_dict(micro_config(world, selection={"budget": 0.05, "window": 0}))
    third = run_pipeline(changed, run_dir)
    assert read_meta(run_dir / "masks" / "ifguide")["fingerprint"] != old_mask
    assert "toxic-only" in third["selection_only"]  # an ablation checked against the labels, not trained
    reused = set(third["reused_stages"])
    assert {"models/base", "factors", "scores/differential", "eval/base"} <= reused
    assert not {"masks/ifguide", "models/ifguide", "eval/ifguide", "masks/random", "models/random"} & reused


def test_a_killed_stage_is_rebuilt_and_the_run_finishes(tmp_path, finished_run, monkeypatch):
    """A crash inside a stage leaves no artifact under its name; the re-run completes it."""
    import shutil

    from ifguide.pipeline import run as run_mod
    from ifguide.training import train as train_mod

    run_dir, cfg_path = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "models" / "ifguide")
    real_train = train_mod.train

    def dying_train(*a, **kw):
        raise KeyboardInterrupt  # as if the process were killed while training

    monkeypatch.setattr(train_mod, "train", dying_train)
    cfg = load_config(cfg_path)
    with pytest.raises(KeyboardInterrupt):
        run_mod.run_pipeline(cfg, copy)
    assert not (copy / "models" / "ifguide").exists()
    monkeypatch.setattr(train_mod, "train", real_train)
    summary = run_mod.run_pipeline(cfg, copy)
    assert "models/base" in summary["reused_stages"] and "models/ifguide" not in summary["reused_stages"]
    assert (copy / "report.html").is_file() and (copy / "models" / "ifguide" / "stage.json").is_file()


def test_derived_document_scores_equal_a_document_level_pass(tmp_path, finished_run):
    """The pipeline derives document scores from token scores; kronfluence's own pass agrees."""
    import numpy as np

    from ifguide.attribution.scores import ScoreConfig, compute_scores
    from ifguide.pipeline.config import load_config
    from ifguide.pipeline.run import Run
    from ifguide.pipeline.stages import StageRunner

    run_dir, cfg_path = finished_run
    cfg = load_config(cfg_path)
    derived = Run(cfg, StageRunner(tmp_path / "derived")).document_scores(str(run_dir / "scores" / "differential"))
    direct = compute_scores(str(run_dir / "models" / "base"), str(run_dir / "blocks"), cfg.attribution.queries_toxic,
                            str(run_dir / "factors"), tmp_path / "direct",
                            ScoreConfig(granularity="document", batch_size=16), queries_safe=cfg.attribution.queries_safe)
    a = np.load(f"{derived}/scores.npy")
    b = np.load(direct / "scores.npy")
    assert np.array_equal(np.isnan(a), np.isnan(b))
    finite = np.isfinite(a)
    np.testing.assert_allclose(a[finite], b[finite], rtol=1e-4, atol=1e-4 * np.abs(b[finite]).max())


def test_rad_with_an_independent_reward_model_is_a_stage_of_its_own(tmp_path, finished_run, world):
    """evaluation.rad_reward_data trains a classifier (stage reward_model) that steers the RAD rows;
    the base model and its plain evaluation are reused, and the RAD rows record which reward they used."""
    import shutil

    from conftest import make_corpus
    from ifguide.pipeline.run import run_pipeline

    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    labelled = write_jsonl(tmp_path / "labelled.jsonl",
                           [{"text": d["text"], "toxic": bool(d.get("toxic_spans"))} for d in make_corpus(60, seed=3)])
    methods = ["base", "ifguide", "rad", "ifguide+rad"]
    cfg = config_from_dict(micro_config(world, methods=methods, evaluation={"rad_k": 5, "rad_reward_data": labelled}))
    summary = run_pipeline(cfg, copy)
    reused = set(summary["reused_stages"])
    # (IF-Guide's mask may differ: an earlier test re-ran the shared run with another window)
    assert {"models/base", "eval/base"} <= reused
    assert not {"reward_model", "eval/rad", "eval/ifguide+rad"} & reused
    reward = json.loads((copy / "reward_model" / "meta.json").read_text())
    assert reward["stage"] == "reward_model" and 0.0 <= reward["heldout"]["auroc"] <= 1.0
    for m in ("rad", "ifguide+rad"):
        rad = json.loads((copy / "eval" / m / "results.json").read_text())["decoding"]["rad"]
        assert rad["scorer"] == f"hf:{copy / 'reward_model'}"
    with pytest.raises(InputError, match="rad_scorer or rad_reward_data"):
        config_from_dict(micro_config(world, evaluation={"rad_scorer": "wordlist", "rad_reward_data": labelled}))


def test_checkpoint_averaged_scores(tmp_path, finished_run, world):
    """attribution.checkpoints: 2 scores the base's mid-training snapshot and the final model, each with
    its own factors, and averages them. Snapshots do not change training: the final model, its factors
    and its scores are those of the single-checkpoint run."""
    import shutil

    from ifguide.artifacts import read_meta
    from ifguide.pipeline.run import run_pipeline

    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proxy = {"arch": "llama", "preset": "micro", "init_seed": 1}
    cfg = config_from_dict(micro_config(world, methods=["base", "ifguide", "proxy"],
                                        attribution={"checkpoints": 2, "proxy": proxy}))
    summary = run_pipeline(cfg, copy)
    # each checkpoint's factors are fitted once and serve both score variants: none was "reused"
    assert not [s for s in summary["reused_stages"] if "checkpoints/" in s]
    assert read_meta(copy / "models" / "base")["snapshots"] == ["snapshots/step-10"]
    assert read_meta(copy / "models" / "base")["fingerprint"] == read_meta(run_dir / "models" / "base")["fingerprint"]
    parts = [copy / "checkpoints" / step / "scores" / "differential" for step in ("step-10", "step-20")]
    arrays = [np.load(p / "scores.npy") for p in parts]
    np.testing.assert_array_equal(arrays[1], np.load(run_dir / "scores" / "differential" / "scores.npy"))
    assert not np.allclose(arrays[0][:, 1:], arrays[1][:, 1:])  # the snapshot is another model
    averaged = np.load(copy / "scores" / "differential" / "scores.npy")
    np.testing.assert_allclose(averaged, (arrays[0].astype(np.float64) + arrays[1]) / 2, rtol=1e-6, atol=1e-12)
    mask_meta = read_meta(copy / "masks" / "ifguide")
    assert mask_meta["scores_fingerprint"] == read_meta(copy / "scores" / "differential")["fingerprint"]
    assert "averaged over 2 checkpoints of the base run (step-10, step-20)" in (copy / "report.html").read_text()
    # the proxy's scores are averaged the same way, under proxy/
    proxy_parts = [np.load(copy / "proxy" / "checkpoints" / step / "scores" / "differential" / "scores.npy")
                   for step in ("step-10", "step-20")]
    np.testing.assert_array_equal(proxy_parts[1], np.load(run_dir / "proxy" / "scores" / "scores.npy"))
    np.testing.assert_allclose(np.load(copy / "proxy" / "scores" / "scores.npy"),
                               (proxy_parts[0].astype(np.float64) + proxy_parts[1]) / 2, rtol=1e-6, atol=1e-12)
    assert read_meta(copy / "masks" / "proxy")["scores_fingerprint"] == read_meta(copy / "proxy" / "scores")["fingerprint"]

    with pytest.raises(InputError, match="attribution.checkpoints"):
        config_from_dict(micro_config(world, attribution={"checkpoints": 0}))
    with pytest.raises(InputError, match="needs a proxy trained by the pipeline"):
        config_from_dict(micro_config(world, methods=["base", "proxy"],
                                      attribution={"checkpoints": 2, "proxy": {"path": str(run_dir / "models" / "base")}}))
    with pytest.raises(InputError, match="needs a base model trained by the pipeline"):
        config_from_dict(micro_config(world, setting="finetune", model={"path": str(run_dir / "models" / "base")},
                                      attribution={"checkpoints": 2}))


def test_conservative_scores_guide_ifguide_and_its_controls(tmp_path, finished_run, world):
    """attribution.score: conservative selects on min(toxic-only, differential) of the same model; the
    two parts are the run's existing score stages (nothing re-scored), the paper's differential
    becomes an ablation checked against the labels, and the proxy combines its own two passes."""
    import shutil

    from ifguide.artifacts import read_meta
    from ifguide.pipeline.run import run_pipeline

    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proxy = {"arch": "llama", "preset": "micro", "init_seed": 1}
    cfg = config_from_dict(micro_config(world, methods=["base", "ifguide", "random", "proxy"],
                                        attribution={"score": "conservative", "proxy": proxy,
                                                     "ablations": ["differential", "toxic-only"]}))
    summary = run_pipeline(cfg, copy)
    assert {"factors", "scores/differential", "scores/toxic-only", "models/base"} <= set(summary["reused_stages"])
    differential = np.load(copy / "scores" / "differential" / "scores.npy")
    toxic = np.load(copy / "scores" / "toxic-only" / "scores.npy")
    conservative = np.load(copy / "scores" / "conservative" / "scores.npy")
    np.testing.assert_array_equal(conservative, np.minimum(differential, toxic))
    assert read_meta(copy / "masks" / "ifguide")["scores_fingerprint"] == read_meta(copy / "scores" / "conservative")["fingerprint"]
    assert summary["methods"]["random"]["attribution"]["n_selected"] == summary["methods"]["ifguide"]["attribution"]["n_selected"]
    assert set(summary["selection_only"]) == {"differential", "toxic-only"}
    assert summary["selection_only"]["differential"]["n_selected"] > 0
    report = (copy / "report.html").read_text()
    assert "IF-Guide selects on conservative scores" in report
    precision = summary["selection_only"]["differential"]["precision"]
    assert f"<td>differential (selection only)</td><td>{precision:.3f}</td>" in report
    # the proxy: its differential pass is the one the default run made, now one of two parts
    parts = {v: np.load(copy / "proxy" / f"scores-{v}" / "scores.npy") for v in ("differential", "toxic-only")}
    np.testing.assert_array_equal(parts["differential"], np.load(run_dir / "proxy" / "scores" / "scores.npy"))
    np.testing.assert_array_equal(np.load(copy / "proxy" / "scores" / "scores.npy"),
                                  np.minimum(parts["differential"], parts["toxic-only"]))
    assert read_meta(copy / "masks" / "proxy")["scores_fingerprint"] == read_meta(copy / "proxy" / "scores")["fingerprint"]

    with pytest.raises(InputError, match="attribution.score"):
        config_from_dict(micro_config(world, attribution={"score": "clipped"}))
    with pytest.raises(InputError, match="only with attribution.score: conservative"):
        config_from_dict(micro_config(world, attribution={"ablations": ["differential"]}))
