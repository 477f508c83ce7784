"""Which modules influence is computed over, for any Hugging Face causal LM.

kronfluence tracks ``nn.Linear`` (and ``nn.Conv2d``) modules. By default we track every
``nn.Linear`` inside the transformer blocks: the blocks are the largest ``nn.ModuleList`` of the
model (``gpt_neox.layers``, ``model.layers``, ``transformer.h``...). Embeddings and the output
head (``lm_head``) are left out: the head is as large as the vocabulary, dominates the cost,
and the paper does not track it. ``--modules REGEX`` overrides the choice.

GPT-2 implements its projections with ``transformers``' ``Conv1D`` (a transposed linear layer)
that kronfluence cannot see; :func:`linearize_conv1d` swaps them for equivalent ``nn.Linear``
layers on a copy of the model, so the outputs and gradients are the same.
"""

from __future__ import annotations

import copy
import logging
import re

from torch import nn

from ifguide.errors import InputError

logger = logging.getLogger(__name__)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D; matched by name so that remote-code copies count too.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def has_conv1d(model: nn.Module) -> bool:
    return any(_is_conv1d(m) for m in model.modules())


def linearize_conv1d(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every GPT-2 ``Conv1D`` replaced by an identical ``nn.Linear``.

    ``Conv1D`` computes ``x @ W + b`` with ``W`` of shape [in, out]; ``nn.Linear`` stores the
    transpose. The original model is not modified.
    """
    model = copy.deepcopy(model)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not _is_conv1d(child):
                continue
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, bias=child.bias is not None, device=child.weight.device,
                               dtype=child.weight.dtype)
            linear.weight.data.copy_(child.weight.data.t())
            if child.bias is not None:
                linear.bias.data.copy_(child.bias.data)
            setattr(parent, child_name, linear)
    return model


def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the ``ModuleList`` with the most entries that contain linear layers."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if not any(isinstance(m, nn.Linear) for m in module.modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise InputError(
            f"{type(model).__name__}: found no transformer blocks (a ModuleList of layers with nn.Linear "
            "modules); pass --modules REGEX to choose the tracked modules"
        )
    return best


def discover_modules(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Names of the ``nn.Linear`` modules to track (see the module docstring).

    With ``pattern``, every ``nn.Linear`` whose full name matches it (``re.search``) is tracked,
    including the output head if the pattern says so.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise InputError(f"--modules: invalid regular expression {pattern!r} ({e})") from None
        names = [name for name, _ in linears if regex.search(name)]
        if not names:
            raise InputError(
                f"--modules: {pattern!r} matches no nn.Linear module; some of them: "
                + ", ".join(name for name, _ in linears[:8])
            )
        return names
    prefix, _ = _block_list(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name for name, m in linears if name.startswith(prefix + ".") and m is not head]
    if not names:
        hint = " (GPT-2 style Conv1D layers: convert them with linearize_conv1d)" if has_conv1d(model) else ""
        raise InputError(f"{type(model).__name__}: no nn.Linear inside {prefix}{hint}; pass --modules REGEX")
    return names
