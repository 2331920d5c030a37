"""Linear layers with weights pre-packed for oneDNN, for transformers models on CPU.

``torch.nn.Linear`` on CPU goes through MKL's GEMM, which is slow for the few rows a decode
step feeds (on an AVX2 EPYC, 5 rows cost 2.5x one row for the same weights). oneDNN with
the weights reordered once into its blocked layout runs those shapes 1.5-2.7x faster and
prompts ~15% faster (``bench/embedded.py``). Results differ from MKL's only in float rounding
(the order of the sums), as a different batch size does.

``pack_linears(model)`` replaces every float32 ``nn.Linear`` of a model for inference; the
packed weight replaces the original (a tied output layer keeps its embedding and packs a copy).
"""

from __future__ import annotations

from typing import Any

import torch


class PackedLinear(torch.nn.Module):
    """Inference-only ``nn.Linear`` whose weight is in oneDNN's packed layout."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, None), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _packs_correctly(linear: torch.nn.Linear) -> bool:
    """This torch build has the oneDNN ops and they compute ``linear``, within float rounding."""
    try:
        x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            return torch.allclose(PackedLinear(linear)(x), linear(x), rtol=1e-4, atol=1e-4)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def pack_linears(model: Any) -> int:
    """Replace the float32 ``nn.Linear`` layers of a CPU ``model`` with :class:`PackedLinear`;
    returns how many (0 when oneDNN is missing or disagrees, and the model is left as it was)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"
    ]
    if not targets or not _packs_correctly(targets[0][2]):
        return 0
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
