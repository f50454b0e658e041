"""The shared layers: the short-sequence attention kernel against torch's fused one, and a decoder layer fed
one position at a time against the whole sequence at once."""

from __future__ import annotations

import pytest
import torch

from genrec.models.layers import Attention, DecoderLayer, attention, softmax


@pytest.mark.parametrize("keys", [5, 15, 16, 40, 80])
def test_short_attention_equals_the_fused_kernel(keys):
    """The matmul path (below SMALL_ATTENTION keys) against torch's scaled_dot_product_attention, with a boolean
    mask, an additive one and causal masking; a query with no allowed key stays finite."""
    g = torch.Generator().manual_seed(keys)
    q, k, v = (torch.randn(3, 2, keys, 8, generator=g) for _ in range(3))
    allowed = torch.rand(3, 1, keys, keys, generator=g) < 0.6
    allowed[..., 0] = True
    bias = torch.randn(3, 2, keys, keys, generator=g).masked_fill(~allowed, float("-inf"))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for mask in (allowed, bias, None):
        torch.testing.assert_close(attention(q, k, v, mask, False, 0.0), sdpa(q, k, v, attn_mask=mask))
    torch.testing.assert_close(attention(q, k, v, None, True, 0.0), sdpa(q, k, v, is_causal=True))
    allowed[0, 0, 1] = False  # query 1 of user 0 may attend nowhere
    assert torch.isfinite(attention(q, k, v, allowed, False, 0.0)).all()
    x = torch.randn(4, keys, generator=g) * 30
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))


def test_a_query_with_nowhere_to_attend_takes_the_mean_of_the_values():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])[None, None]
    out = attention(q, k, v, mask, False, 0.0)
    torch.testing.assert_close(out[0, 0, 1], v[0, 0].mean(0))  # uniform weights over the masked keys


def test_attention_module_splits_heads_as_a_hand_computed_projection():
    torch.manual_seed(0)
    a = Attention(d_model=6, num_heads=2, head_dim=3, dropout=0.0)
    x = torch.randn(2, 4, 6)
    out = a.attend(a.split(a.q(x)), *a.project_kv(x), None, causal=True)
    q, (k, v) = x @ a.q.weight.T, (x @ a.kv.weight.T).chunk(2, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(3 * h, 3 * h + 3)
        s = q[..., cols] @ k[..., cols].transpose(1, 2) / 3**0.5
        s = s.masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[..., cols])
    torch.testing.assert_close(out, torch.cat(heads, -1) @ a.o.weight.T, atol=1e-6, rtol=1e-5)


def test_decoder_layer_step_by_step_equals_the_whole_sequence():
    """Feeding positions one at a time against the cached keys and values of the earlier ones, or two at once
    after a cached first one, gives the outputs of the whole sequence under a causal mask."""
    torch.manual_seed(1)
    layer = DecoderLayer(d_model=8, num_heads=2, head_dim=4, d_ff=16, dropout=0.0).eval()
    B, W, t, S = 2, 3, 4, 5
    x = torch.randn(B, W, t, 8)
    cross_k, cross_v = torch.randn(B, 2, S, 4), torch.randn(B, 2, S, 4)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[0, ..., :2] = False
    whole, _ = layer(x, cross_k, cross_v, mask, None)
    steps, past = [], None
    for i in range(t):
        out, past = layer(x[:, :, i : i + 1], cross_k, cross_v, mask, past)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 2), whole, atol=1e-5, rtol=1e-5)
    first, past = layer(x[:, :, :1], cross_k, cross_v, mask, None)
    rest, _ = layer(x[:, :, 1:3], cross_k, cross_v, mask, past)
    torch.testing.assert_close(torch.cat([first, rest], 2), whole[:, :, :3], atol=1e-5, rtol=1e-5)
