"""Tokenizers and causal LMs: load any Hugging Face model by hub id or local directory,
build randomly initialised models from size presets, and fingerprint both.

Loading is real ``transformers`` code (``AutoTokenizer`` / ``AutoModelForCausalLM``), so hub
ids work for online users; every function also accepts a local directory, which is what the
tests, the demo and the benchmarks use (they run offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ifguide.errors import InputError

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Preset:
    """Shape of a model; the vocabulary comes from the tokenizer."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    help: str


PRESETS: dict[str, Preset] = {
    "micro": Preset(32, 2, 2, 64, 512, "~0.05 M parameters plus embeddings; unit tests"),
    "tiny": Preset(128, 2, 4, 512, 1024, "~1-2 M parameters with an 8k vocabulary; CPU tests and the demo"),
    "small": Preset(256, 6, 8, 1024, 2048, "~10-20 M parameters; CPU benchmarks"),
    "pythia-160m": Preset(768, 12, 12, 3072, 2048, "Pythia-160M shape (GPU)"),
    "pythia-410m": Preset(1024, 24, 16, 4096, 2048, "Pythia-410M shape (GPU)"),
    "pythia-1b": Preset(2048, 16, 8, 8192, 2048, "Pythia-1B shape (GPU)"),
}
ARCHITECTURES = ("gpt-neox", "llama", "gpt2", "qwen2")


def _is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).exists()


def _load_error(kind: str, name: str, err: Exception) -> InputError:
    hint = (
        "it is not a local directory, and loading it from the Hugging Face hub failed"
        if not _is_local(name)
        else "the directory exists but does not hold a loadable " + kind
    )
    return InputError(f"{name}: cannot load {kind}: {hint} ({type(err).__name__}: {err})")


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False):
    """Load a tokenizer; guarantees an EOS token and a pad token (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error("tokenizer", name, e) from None
    if tok.eos_token is None:
        raise InputError(f"{name}: the tokenizer has no EOS token; documents are joined with EOS")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model: Any,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """Return a causal LM from a hub id, a local directory, or an already built model object."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(model, PreTrainedModel) or isinstance(model, torch.nn.Module):
        return model
    name = str(model)
    try:
        m = AutoModelForCausalLM.from_pretrained(
            name, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise _load_error("causal LM", name, e) from None
    if device:
        m.to(device)
    return m


def make_config(arch: str, preset: str | Preset, vocab_size: int, *, bos_id: int, eos_id: int, pad_id: int):
    """A ``transformers`` config of the given architecture and size preset."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    common = dict(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if arch == "gpt-neox":
        return GPTNeoXConfig(
            hidden_size=preset.hidden,
            num_hidden_layers=preset.layers,
            num_attention_heads=preset.heads,
            intermediate_size=preset.intermediate,
            max_position_embeddings=preset.max_positions,
            tie_word_embeddings=False,
            **common,
        )
    if arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        return cls(
            hidden_size=preset.hidden,
            num_hidden_layers=preset.layers,
            num_attention_heads=preset.heads,
            num_key_value_heads=preset.heads,
            intermediate_size=preset.intermediate,
            max_position_embeddings=preset.max_positions,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=preset.hidden,
            n_layer=preset.layers,
            n_head=preset.heads,
            n_inner=preset.intermediate,
            n_positions=preset.max_positions,
            **common,
        )
    raise InputError(f"--arch: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def init_model(arch: str, preset: str, tokenizer: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0):
    """Randomly initialise a model for ``tokenizer`` and save it (with the tokenizer) to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ifguide.artifacts import artifact_dir, write_meta

    tok = load_tokenizer(tokenizer)
    config = make_config(
        arch,
        preset,
        len(tok),
        bos_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    with artifact_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_meta(
            tmp,
            "model",
            args={"arch": arch, "preset": preset, "tokenizer": str(tokenizer), "seed": seed},
            parameters=n_params,
            tokenizer_fingerprint=fingerprint_tokenizer(tok),
            fingerprint=fingerprint_model(model),
        )
    logger.info("initialised %s/%s with %.2f M parameters -> %s", arch, preset, n_params / 1e6, out)
    return model


def fingerprint_tokenizer(tok) -> str:
    """sha256 of what decides the token ids: vocabulary, merges, normaliser, special tokens."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        payload = json.dumps(spec, sort_keys=True)
    else:
        payload = json.dumps(sorted(tok.get_vocab().items()))
    specials = json.dumps({k: str(v) for k, v in sorted(tok.special_tokens_map.items())}, sort_keys=True)
    return hashlib.sha256((type(tok).__name__.replace("Fast", "") + payload + specials).encode()).hexdigest()


def fingerprint_model(model) -> str:
    """sha256 of the architecture config and every parameter/buffer, in name order."""
    import torch

    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"):
        cfg.pop(volatile, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint_from_dir(path: str | os.PathLike) -> str | None:
    """The fingerprint recorded by ifguide when it saved a model directory, if any."""
    meta = Path(path) / "meta.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            return None
    return None
