"""Causal attention (issue 14): the cross-attention fusion and the AV-Sepformer separator with
``causal=True`` look at no later frame; ``causal=False`` is the module without the option."""
import torch

from avse.models.fusion import CrossAttentionFusion


def _fusion(seed: int = 0, **kw) -> CrossAttentionFusion:
    torch.manual_seed(seed)
    return CrossAttentionFusion(audio_dim=8, visual_dim=6, num_heads=2, **kw).eval()


def _later_changed(x: torch.Tensor, t: int, seed: int = 5) -> torch.Tensor:
    """``x [B, C, T]`` with its frames from ``t`` on replaced."""
    g = torch.Generator().manual_seed(seed)
    y = x.clone()
    y[..., t:] = torch.randn(y[..., t:].shape, generator=g)
    return y


@torch.no_grad()
def test_cross_attention_fusion_causal_with_held_visual():
    """Tv == L (the visual stream held per audio frame): frame j sees video columns <= j."""
    g = torch.Generator().manual_seed(1)
    audio, visual = torch.randn(2, 8, 40, generator=g), torch.randn(2, 6, 40, generator=g)
    for time_bias in (True, False):
        f = _fusion(time_bias=time_bias, causal=True)
        ref = f(audio, visual)
        for t in (1, 17, 39):
            out = f(_later_changed(audio, t), _later_changed(visual, t, seed=6))
            assert torch.allclose(out[..., :t], ref[..., :t], atol=1e-6, rtol=0), (time_bias, t)
            assert (out[..., t:] - ref[..., t:]).abs().max() > 1e-3


@torch.no_grad()
def test_cross_attention_fusion_causal_at_the_video_rate():
    """Tv < L: audio frame j sees the video frames v <= floor(j Tv / L) (align_visual's hold)."""
    g = torch.Generator().manual_seed(2)
    length, frames = 50, 7
    audio, visual = torch.randn(1, 8, length, generator=g), torch.randn(1, 6, frames, generator=g)
    f = _fusion(causal=True)
    ref = f(audio, visual)
    for v in range(1, frames):
        first = -(-v * length // frames)  # the first audio frame that holds video frame v
        out = f(audio, _later_changed(visual, v))
        assert torch.allclose(out[..., :first], ref[..., :first], atol=1e-6, rtol=0), v
        assert (out[..., first] - ref[..., first]).abs().max() > 1e-4, v
    assert torch.all(f.causal_mask(length, frames, ref)[:, 0] == 0)  # never a row of -inf


@torch.no_grad()
def test_cross_attention_fusion_causal_false_is_unchanged():
    g = torch.Generator().manual_seed(3)
    audio, visual = torch.randn(2, 8, 30, generator=g), torch.randn(2, 6, 5, generator=g)
    plain, flagged = _fusion(), _fusion(causal=False)
    a, b = plain.state_dict(), flagged.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(plain(audio, visual), flagged(audio, visual))
    # and the default looks ahead: the last video frame reaches the first audio frames
    out = plain(audio, _later_changed(visual, 4))
    assert (out[..., :5] - plain(audio, visual)[..., :5]).abs().max() > 1e-6
    assert _fusion(causal=True).state_dict().keys() == a.keys()
