"""Throughput of the evaluation's sampling: batched vs per-prompt, and RAD's slowdown.

Prints a table of samples/s for, on the same randomly initialised model and prompts:

* ``per-prompt loop`` (baseline): one ``generate(num_return_sequences=samples)`` per prompt;
* ``batched``: :func:`ifguide.evaluation.generation.sample_continuations` (left-padded batches
  of prompts, each expanded ``samples`` times inside one ``generate`` call);
* ``batched + RAD``: the same with :class:`ifguide.baselines.rad.RewardAugmentedLogits` and the
  ``--rad-scorer`` reward (profanity-check);
* ``RAD, classifier (texts)`` / ``RAD, classifier (cached)``: RAD with a causal sequence
  classifier of the ``--reward-preset`` size sharing the model's tokenizer (what
  ``ifguide reward-model`` trains; random weights here, which does not change the cost), scored
  the generic way (decode, re-tokenise and read every candidate text) and with the key/value
  cache (one token per sequence and per candidate and step).

    python bench/generation.py --prompts /work/shared/data/realtoxicityprompts/rtp_merged_dedup.jsonl

The tokenizer is trained on the prompts themselves and the model is built from a size preset,
so the benchmark runs offline; pass --model DIR to time a real model instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from ifguide.baselines.rad import RewardAugmentedLogits  # noqa: E402
from ifguide.data.tokenizer import train_tokenizer  # noqa: E402
from ifguide.evaluation.generation import SamplingConfig, sample_continuations  # noqa: E402
from ifguide.evaluation.prompts import load_prompts  # noqa: E402
from ifguide.evaluation.scorers import get_scorer  # noqa: E402
from ifguide.models import init_model, load_model, load_tokenizer  # noqa: E402


def per_prompt_loop(model, tok, prompts: list[str], cfg: SamplingConfig, seed: int) -> list[list[str]]:
    """The baseline: one generate call per prompt, its samples as num_return_sequences."""
    torch.manual_seed(seed)
    out = []
    for text in prompts:
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            gen = model.generate(
                **enc, do_sample=True, top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.samples, pad_token_id=tok.pad_token_id,
            )
        out.append(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def timed(fn) -> tuple[float, list[list[str]]]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def build(args, workdir: str, prompts: list[str]):
    if args.model:
        return load_model(args.model), load_tokenizer(args.model)
    tok_dir, model_dir = os.path.join(workdir, "tok"), os.path.join(workdir, "model")
    train_tokenizer(texts=prompts * 4, vocab_size=args.vocab, out=tok_dir)
    init_model(args.arch, args.preset, tok_dir, model_dir, seed=0)
    return load_model(model_dir), load_tokenizer(model_dir)


def causal_reward(tok, arch: str, preset: str):
    """A randomly initialised causal sequence classifier on ``tok``, as a scorer."""
    from transformers import AutoModelForSequenceClassification

    from ifguide.evaluation.scorers import HFClassifierScorer
    from ifguide.models import make_config

    cfg = make_config(arch, preset, len(tok), bos_id=tok.eos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    cfg.num_labels = 2
    torch.manual_seed(0)
    return HFClassifierScorer(AutoModelForSequenceClassification.from_config(cfg), tok, toxic_index=1, name=preset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default="/work/shared/data/realtoxicityprompts/rtp_merged_dedup.jsonl")
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=25)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=200, help="sequences per generate call (batched runs)")
    p.add_argument("--model", help="time this model instead of a fresh one")
    p.add_argument("--arch", default="gpt-neox")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--rad-k", type=int, default=20)
    p.add_argument("--rad-scorer", default="profanity-check")
    p.add_argument("--reward-preset", default="tiny", help="size of the classifier reward (gpt-neox preset)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    prompts = [x.text for x in load_prompts(args.prompts, args.n_prompts)]
    with tempfile.TemporaryDirectory() as workdir:
        model, tok = build(args, workdir, prompts)
        model.eval()
        cfg = SamplingConfig(args.samples, args.max_new_tokens, 0.9, args.batch_size)
        sample_continuations(model, tok, prompts[:2], SamplingConfig(2, 2, 0.9, 4), seed=0)  # warm-up
        rad = RewardAugmentedLogits(tok, get_scorer(args.rad_scorer), k=args.rad_k, beta=10.0)
        reward = causal_reward(tok, "gpt-neox", args.reward_preset)
        rad_cached = RewardAugmentedLogits(tok, reward, k=args.rad_k, beta=10.0)
        rad_texts = RewardAugmentedLogits(tok, reward, k=args.rad_k, beta=10.0)
        assert rad_cached.cached is not None
        rad_texts.cached = None  # the generic path: candidate texts through scorer.score
        runs = [
            ("per-prompt loop", lambda: per_prompt_loop(model, tok, prompts, cfg, seed=1)),
            ("batched", lambda: sample_continuations(model, tok, prompts, cfg, seed=1)),
            ("batched + RAD", lambda: sample_continuations(model, tok, prompts, cfg, seed=1, logits_processor=rad)),
            ("RAD, classifier (texts)",
             lambda: sample_continuations(model, tok, prompts, cfg, seed=1, logits_processor=rad_texts)),
            ("RAD, classifier (cached)",
             lambda: sample_continuations(model, tok, prompts, cfg, seed=1, logits_processor=rad_cached)),
        ]
        n = len(prompts) * args.samples
        rows = []
        for name, fn in runs:
            seconds, out = timed(fn)
            assert sum(len(g) for g in out) == n
            rows.append((name, seconds, n / seconds))
    params = sum(x.numel() for x in model.parameters()) / 1e6
    print(f"\n{len(prompts)} prompts x {args.samples} samples x {args.max_new_tokens} tokens; "
          f"model {args.model or args.arch + '/' + args.preset} ({params:.1f} M params); "
          f"{torch.get_num_threads()} threads; RAD k={args.rad_k} scorer={args.rad_scorer}; "
          f"classifier reward gpt-neox/{args.reward_preset}\n")
    print(f"| {'method':<24} | {'seconds':>8} | {'samples/s':>9} | {'vs per-prompt':>13} | {'vs batched':>10} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 11}|{'-' * 15}|{'-' * 12}|")
    base, batched = rows[0][2], rows[1][2]
    for name, seconds, rate in rows:
        print(f"| {name:<24} | {seconds:8.2f} | {rate:9.1f} | {rate / base:12.2f}x | {rate / batched:9.2f}x |")
    texts, cached = rows[3][1], rows[4][1]
    print(f"\ncached classifier reward: {texts / cached:.1f}x faster than scoring candidate texts")


if __name__ == "__main__":
    main()
