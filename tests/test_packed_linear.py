"""oneDNN pre-packed linear layers (cai/models/packed_linear.py): the same numbers as
``nn.Linear`` up to float rounding, on the real (2-layer) embedded model they replace every
linear layer and keep its greedy choices, and the transformers backend uses them on CPU."""

from __future__ import annotations

import pytest
import torch

from cai.models.packed_linear import PackedLinear, pack_linears


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_the_linear_layer(rows: int, bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias)
    x = torch.randn(2, rows, 64)
    with torch.inference_mode():
        want, got = linear(x), PackedLinear(linear)(x)
    assert got.shape == (2, rows, 96)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, linear(x.flip(1)))  # it depends on its input


def test_packing_a_model_keeps_its_logits_and_greedy_picks(tiny_hf_dir) -> None:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    linears = sum(type(m) is torch.nn.Linear for m in packed.modules())
    assert pack_linears(packed) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    ids = torch.randint(0, 1000, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = plain(input_ids=ids).logits, packed(input_ids=ids).logits
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_nothing_is_packed_when_onednn_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: torch.zeros(x.shape[0], self.out_features))
    assert pack_linears(model) == 0
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert pack_linears(torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.bfloat16))) == 0  # float32 only


def test_the_transformers_backend_packs_on_cpu(embedded_model) -> None:
    assert embedded_model.packed_linears > 0
    assert not any(type(m) is torch.nn.Linear for m in embedded_model.model.modules())
