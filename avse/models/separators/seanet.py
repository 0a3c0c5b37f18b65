"""SEANet: dual-branch dual-path extractor with reverse selective auditory attention.

After Tao et al., "Audio-visual target speaker extraction with reverse selective auditory
attention" (SEANet). The front is AV-DPRNN's (:mod:`~avse.models.separators.dprnn`): global
layer norm, 1x1 bottleneck ``N -> B``, fusion with the visual stream (the reference
concatenates the *linearly* upsampled visual features and projects ``B + Dv -> B``: the
``concat`` fusion with ``align: linear``), 50 % overlapping chunks of K frames. Then two
branches, one estimating the target speech and one the rest of the mixture ("noise"), each
a stack of R dual-path BLSTM blocks (:class:`~avse.models.separators.dprnn.DualPathBlock`).
Before every block but the first, a :class:`CrossBlock` lets the two branches exchange
information; after every block both branches are turned into masks by one mask head (PReLU,
1x1 conv ``B -> N``, ReLU) shared by the branches and the repeats.

Reverse selective auditory attention (:class:`ReverseAttention`), for each branch ``a``
with the other branch ``b``: queries, keys and values are ReLU'd linear maps of the
batch-normalised features (``A = 4B`` wide, 4 heads), and::

    y_a = ( softmax(q_self_a k_a^T / sqrt(d)) + softmax(-q_b k_a^T / sqrt(d)) ) / 2  v_a
    out_a = ReLU(W_o y_a)

that is, branch ``a`` averages its self-attention with an attention that *negates* the
scores the other branch's query gives to ``a``'s keys (attend where the other branch does
not). A :class:`CrossBlock` applies it within chunks (over the K frames) then across chunks
(over the S chunks), each followed by gLN and a residual connection.

Internally chunks are channels-last, ``[M, S, K, B]``, as in AV-DPRNN. The chunking is the
reference's: ``K/2`` zero frames before the L frames and ``gap + K/2`` after, with
``gap = K - (K/2 + L mod K) mod K`` (1..K), so ``S = (L + gap + K/2) / (K/2)`` chunks
(66 for 4 s with a 20-sample hop).

The reference (``TaoRuijie/SEANet``, ``model/seanet.py``) builds R cross blocks but uses
only the last R - 1: the first (333,056 parameters at the published size) is dead weight
and is not built here. Its published 8.70 M parameters are therefore 8.37 M here;
:func:`convert_reference_state_dict` drops that block's weights.

Example
-------
>>> import torch
>>> sep = SEANetSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=8, chunk_size=10,
...                       num_layers=2, num_heads=2)
>>> out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
>>> [m.shape for m in out.masks], len(out.aux_masks["noise"])
([torch.Size([2, 16, 37]), torch.Size([2, 16, 37])], 2)
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.io import state_dict_problems
from avse.models.base import Separator, SeparatorOutput, build_fusion
from avse.models.separators.dprnn import (_MASK_ACTS, DualPathBlock, GlobalNormLast, overlap_add,
                                         reference_num_chunks, segment)
from avse.models.registry import register

__all__ = ["SEANetSeparator", "CrossBlock", "ReverseAttention", "convert_reference_state_dict",
           "to_reference_state_dict"]


class ReverseAttention(nn.Module):
    """Reverse selective auditory attention between two branches, on ``[M, T, D]`` each.

    Per branch (``_s`` speech, ``_n`` noise): ``BatchNorm1d(D)`` over the channels, a fused
    projection ``D -> 4A`` (ReLU) giving ``[q_self, q_other, k, v]``, and an output
    projection ``A -> D`` (ReLU). Branch s attends over its own keys/values with the mean of
    two softmaxes: its own ``q_self`` and the negated ``q_other`` of branch n; and vice
    versa. Scores are scaled by ``1 / sqrt(A / num_heads)``.

    Arguments
    ---------
    dim : int
        D, the feature size (bottleneck B).
    num_heads : int
        attention heads (reference 4).
    attn_dim : int, optional
        A, the attention width (a multiple of ``num_heads``); default ``4 * dim`` (reference).
    """

    def __init__(self, dim: int, num_heads: int = 4, attn_dim: int | None = None):
        super().__init__()
        attn_dim = int(attn_dim or 4 * dim)
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be a multiple of num_heads "
                             f"({num_heads})")
        self.num_heads, self.attn_dim = int(num_heads), attn_dim
        self.norm_s, self.norm_n = nn.BatchNorm1d(dim), nn.BatchNorm1d(dim)
        self.proj_s, self.proj_n = nn.Linear(dim, 4 * attn_dim), nn.Linear(dim, 4 * attn_dim)
        self.out_s, self.out_n = nn.Linear(attn_dim, dim), nn.Linear(attn_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, T, A]`` -> ``[M, heads, T, A / heads]``."""
        m, t, _ = x.shape
        return x.view(m, t, self.num_heads, -1).transpose(1, 2)

    @staticmethod
    def _attend(q_self, q_other, k, v, scale):
        """``softmax(q_self k^T s) v + softmax(-q_other k^T s) v`` on ``[M, heads, T, d]``.

        fp32 (and GPUs): two SDPA calls, the negation a negative ``scale``. Reduced precision
        on CPU (bf16 autocast): explicit matmuls, one ``@ v`` for both, because CPU SDPA in
        bf16 is several times slower than the matmuls (measured: 646 ms vs 98 ms forward +
        backward for 132 x 4 heads x 100 x 64).
        """
        if q_self.device.type == "cpu" and q_self.dtype in (torch.bfloat16, torch.float16):
            kt = k.transpose(-1, -2)
            attn = torch.softmax((q_self @ kt) * scale, dim=-1) + torch.softmax(
                (q_other @ kt) * -scale, dim=-1)
            return attn @ v
        return (F.scaled_dot_product_attention(q_self, k, v, scale=scale)
                + F.scaled_dot_product_attention(q_other, k, v, scale=-scale))

    def forward(self, s: torch.Tensor, n: torch.Tensor):
        """s, n ``[M, T, D]`` -> (speech, noise) updates ``[M, T, D]`` each."""
        m, t, d = s.shape
        feats = []
        for x, norm, proj in ((s, self.norm_s, self.proj_s), (n, self.norm_n, self.proj_n)):
            x = norm(x.reshape(m * t, d)).view(m, t, d)  # BatchNorm over the channels
            feats.append(F.relu(proj(x)).chunk(4, dim=-1))  # q_self, q_other, k, v
        (qs_self, qs_other, k_s, v_s), (qn_self, qn_other, k_n, v_n) = feats
        # four attention calls on strided views: no concatenated queries, no negated copy
        # (the negation is a negative scale), no slices whose backward fills zeros
        scale = (self.attn_dim // self.num_heads) ** -0.5
        h = self._heads
        ys = self._attend(h(qs_self), h(qn_other), h(k_s), h(v_s), scale)
        yn = self._attend(h(qn_self), h(qs_other), h(k_n), h(v_n), scale)
        ys, yn = (0.5 * y.transpose(1, 2).reshape(m, t, self.attn_dim) for y in (ys, yn))
        return F.relu(self.out_s(ys)), F.relu(self.out_n(yn))


class CrossBlock(nn.Module):
    """Exchange between the branches on chunks ``[M, S, K, D]``.

    ``x_a = x_a + gLN_a(attn_intra(x_s, x_n)_a)`` along the K frames of each chunk, then the
    same with ``attn_inter`` along the S chunks, for both branches a in {s, n}.
    (The reference calls the first ``inter_cross`` and the second ``intra_cross``; here the
    names follow :class:`~avse.models.separators.dprnn.DualPathBlock`: intra = within a chunk.)
    """

    def __init__(self, dim: int, num_heads: int = 4, attn_dim: int | None = None):
        super().__init__()
        self.intra_attn = ReverseAttention(dim, num_heads, attn_dim)
        self.inter_attn = ReverseAttention(dim, num_heads, attn_dim)
        self.intra_norm_s, self.intra_norm_n = GlobalNormLast(dim), GlobalNormLast(dim)
        self.inter_norm_s, self.inter_norm_n = GlobalNormLast(dim), GlobalNormLast(dim)

    def forward(self, s: torch.Tensor, n: torch.Tensor):
        """s, n ``[M, S, K, D]`` (contiguous) -> same shapes (contiguous)."""
        m, c, k, d = s.shape
        ys, yn = self.intra_attn(s.view(m * c, k, d), n.view(m * c, k, d))
        s = s + self.intra_norm_s(ys.view(m, c, k, d))
        n = n + self.intra_norm_n(yn.view(m, c, k, d))
        st = s.transpose(1, 2).reshape(m * k, c, d)  # [M*K, S, D]
        nt = n.transpose(1, 2).reshape(m * k, c, d)
        ys, yn = self.inter_attn(st, nt)
        s = st.view(m, k, c, d) + self.inter_norm_s(ys.view(m, k, c, d))
        n = nt.view(m, k, c, d) + self.inter_norm_n(yn.view(m, k, c, d))
        return s.transpose(1, 2).contiguous(), n.transpose(1, 2).contiguous()


@register("separator", "seanet")
class SEANetSeparator(Separator):
    """SEANet separator: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> speech and noise masks.

    Arguments
    ---------
    in_dim : int
        N, encoder channels (reference 256).
    visual_dim : int
        Dv, visual encoder channels (reference 256).
    fusion : spec
        fusion at the bottleneck, built with ``audio_dim=B``; the reference is
        ``{type: concat, align: linear}``. A fusion whose ``out_dim != B`` is followed by a
        1x1 conv to B.
    bottleneck : int
        B (reference 64).
    hidden : int
        H, BLSTM hidden size per direction (reference 128).
    chunk_size : int
        K, frames per chunk (reference 100; even, chunks overlap by K/2).
    num_layers : int
        R, dual-path blocks per branch (reference 6); each gives a speech and a noise
        estimate.
    num_heads : int
        heads of the reverse attention (reference 4).
    attn_dim : int, optional
        width of the reverse attention; default ``4 * bottleneck`` (reference).
    mask_act : str
        ``"relu"`` (reference), ``"sigmoid"`` or ``"none"``.
    rnn_type, bidirectional :
        as in AV-DPRNN (reference: BLSTM).
    noise_output : bool
        when no intermediates are asked for, still compute the final noise mask (the noise
        branch's last block and the mask head; needed by a noise loss at validation).
        False skips them: an inference-only speed-up.

    ``forward(..., return_intermediate=True)`` returns R speech masks in ``masks`` and R
    noise masks in ``aux_masks["noise"]`` (the last ones final); otherwise only the final
    speech mask (and the final noise mask if ``noise_output``) is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 num_heads: int = 4, attn_dim: int | None = None, mask_act: str = "relu",
                 rnn_type: str = "LSTM", bidirectional: bool = True, noise_output: bool = True):
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"chunk_size must be even and >= 2 (50 % overlap), got {chunk_size}")
        if mask_act not in _MASK_ACTS:
            raise ValueError(f"mask_act must be one of {sorted(_MASK_ACTS)}, got {mask_act!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_dim, self.bottleneck_dim = int(in_dim), int(bottleneck)
        self.chunk_size, self.hop = int(chunk_size), int(chunk_size) // 2
        self.num_layers = int(num_layers)
        self.noise_output = bool(noise_output)
        self.norm = nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        self.fusion = build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
        self.fusion_proj = (nn.Conv1d(self.fusion.out_dim, bottleneck, 1, bias=False)
                            if self.fusion.out_dim != bottleneck else None)
        self.speech_blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type,
                                                         bidirectional)
                                           for _ in range(num_layers))
        self.noise_blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type,
                                                        bidirectional)
                                          for _ in range(num_layers))
        self.cross = nn.ModuleList(CrossBlock(bottleneck, num_heads, attn_dim)
                                   for _ in range(num_layers - 1))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, in_dim, 1, bias=False)
        self.mask_act = mask_act

    def num_chunks(self, length: int) -> int:
        """S for L frames: the reference pads to ``L + gap + K/2``, a multiple of K."""
        return reference_num_chunks(length, self.chunk_size)

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]`` (chunk j starts at padded frame j K/2)."""
        return segment(x, self.hop, self.num_chunks(x.shape[1]))

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, D]`` -> ``[M, L, D]``: each frame summed over its two chunks."""
        return overlap_add(chunks, length, self.hop)

    def _mask(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, B]`` -> mask ``[M, N, L]`` (the head shared by both branches)."""
        x = self._overlap_add(chunks, length)
        mask = self.mask_conv(self.mask_prelu(x).transpose(1, 2))
        act = _MASK_ACTS[self.mask_act]
        return act(mask) if act is not None else mask

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``,
        ``aux_masks["noise"]``)."""
        length = feats.shape[-1]
        x = self.fusion(self.bottleneck(self.norm(feats)), visual)  # [B, B', L]
        if self.fusion_proj is not None:
            x = self.fusion_proj(x)
        x = self._segment(x.transpose(1, 2))  # [B, S, K, B']
        last = self.num_layers - 1
        want_noise = return_intermediate or self.noise_output
        speech_masks, noise_masks = [], []
        s = n = x
        for i in range(self.num_layers):
            if i > 0:
                s, n = self.cross[i - 1](s, n)
            s = self.speech_blocks[i](s)
            if i < last or want_noise:  # the last noise block only feeds the noise mask
                n = self.noise_blocks[i](n)
            if return_intermediate or i == last:
                speech_masks.append(self._mask(s, length))
                if want_noise:
                    noise_masks.append(self._mask(n, length))
        return SeparatorOutput(speech_masks, {"noise": noise_masks} if noise_masks else {})


# ------------------------------------------------------------------ reference checkpoints
#
# The reference trainer's state dict (``trainer.state_dict()``: every key under ``model.``)
# <-> AVSEModel(conv encoder, embedding visual encoder, seanet separator with the concat
# fusion). Each rule maps a group of our keys to a group of reference keys with a transform:
#   same     identity
#   gln      gLN gamma/beta [1, C, 1] (reference GlobalLayerNorm) <-> [C] (GroupNorm)
#   linear   Linear weight [out, in] (reference) <-> 1x1 conv weight [out, in, 1] (ours)
#   basis    decoder basis Linear(N, L) weight [L, N] <-> ConvTranspose1d weight [N, 1, L]
#   cat      several reference tensors <-> one of ours, concatenated along dim 0 (q/k/v)
#   split    one reference tensor <-> several of ours, split along dim 1 (av_conv)

_REF = "model."
_BRANCH = {"s": "1", "n": "2"}  # reference Cross_layer: 1 = speech input, 2 = noise input
_PATH = {"intra": "inter", "inter": "intra"}  # our within-chunk 'intra' is its 'inter_cross'


def _rule(key: str, ours: dict):
    """(our keys, reference keys without the prefix, transform) for our key ``key``."""
    m = re.fullmatch(r"visual_encoder\.vtcn\.blocks\.(\d+)\.net\.(\d+)\.(weight|bias)", key)
    if m:
        i, j, kind = m.groups()
        if isinstance(ours.get(f"visual_encoder.vtcn.blocks.{i}.net.{j}.bias"), torch.Tensor):
            name = {"weight": "gamma", "bias": "beta"}[kind]  # a norm: it has a bias
            return (key,), (f"separator.v_conv.{i}.net.{j}.{name}",), "gln"
        return (key,), (f"separator.v_conv.{i}.net.{j}.{kind}",), "same"
    m = re.fullmatch(r"separator\.(speech|noise)_blocks\.(\d+)\.(.+)", key)
    if m:
        branch, i, rest = m.groups()
        return (key,), (f"separator.rnn_{branch[0]}.{i}.{rest}",), "same"
    m = re.fullmatch(r"separator\.cross\.(\d+)\.(intra|inter)_(attn|norm_s|norm_n)\.?(.*)", key)
    if m:
        i, path, part, rest = m.groups()
        base = f"separator.cross.{int(i) + 1}."
        if part != "attn":
            return (key,), (f"{base}{_PATH[path]}_{part}.{rest}",), "same"
        layer = f"{base}{_PATH[path]}_cross."
        m2 = re.fullmatch(r"(proj|out|norm)_(s|n)\.(.+)", rest)
        if not m2:
            return None
        what, br, leaf = m2.groups()
        b = _BRANCH[br]
        if what == "proj":
            names = (f"q{b}_self", f"q{b}", f"k{b}", f"v{b}")
            return (key,), tuple(f"{layer}linear_{x}.{leaf}" for x in names), "cat"
        if what == "out":
            return (key,), (f"{layer}linear_o{b}.{leaf}",), "same"
        return (key,), (f"{layer}norm{b}.{leaf}",), "same"
    fixed = {
        "audio_encoder.conv.weight": ("encoder.conv1d_U.weight", "same"),
        "decoder.deconv.weight": ("decoder.basis_signals.weight", "basis"),
        "visual_encoder.vtcn.proj.weight": ("separator.v_ds.weight", "linear"),
        "separator.norm.weight": ("separator.layer_norm.weight", "same"),
        "separator.norm.bias": ("separator.layer_norm.bias", "same"),
        "separator.bottleneck.weight": ("separator.bottleneck_conv1x1.weight", "same"),
        "separator.mask_prelu.weight": ("separator.adder.prelu.weight", "same"),
        "separator.mask_conv.weight": ("separator.adder.mask_conv1x1.weight", "same"),
    }
    if key in fixed:
        ref, kind = fixed[key]
        return (key,), (ref,), kind
    if key in ("separator.fusion.audio_proj.weight", "separator.fusion.visual_proj.weight"):
        return (("separator.fusion.audio_proj.weight", "separator.fusion.visual_proj.weight"),
                ("separator.av_conv.weight",), "split")
    return None


def _rules(ours: dict) -> list:
    """Every rule for our state dict ``ours`` (key -> tensor); ValueError names our keys that
    the reference format cannot hold (another fusion, a fusion_proj, ...)."""
    rules, seen, bad = [], set(), []
    for key in ours:
        if key in seen:
            continue
        rule = _rule(key, ours)
        if rule is None:
            bad.append(key)
            continue
        seen.update(rule[0])
        rules.append(rule)
    if bad:
        raise ValueError("not representable in the reference SEANet format (it needs the "
                         "conv encoder, the embedding visual encoder and the seanet separator "
                         f"with the concat fusion): {', '.join(bad)}")
    return rules


def _to_ref(kind: str, tensors: list) -> list:
    """Our tensors of one rule -> its reference tensors."""
    if kind == "same":
        return list(tensors)
    if kind == "split":
        return [torch.cat(tensors, dim=1)]
    t = tensors[0]
    if kind == "gln":
        return [t.reshape(1, -1, 1)]
    if kind == "linear":
        return [t.squeeze(-1)]
    if kind == "basis":
        return [t.squeeze(1).t()]
    if kind == "cat":
        return list(t.chunk(4, dim=0))
    raise AssertionError(kind)


def _from_ref(kind: str, tensors: list, shapes: list) -> list:
    """Reference tensors of one rule -> our tensors (of ``shapes``), never views of the input."""
    if kind == "same":
        return [t.clone() for t in tensors]
    if kind == "split":
        return [p.clone() for p in tensors[0].split([s[1] for s in shapes], dim=1)]
    if kind == "cat":
        return [torch.cat(tensors, dim=0)]
    if kind in ("gln", "linear"):
        return [tensors[0].reshape(shapes[0]).clone()]
    if kind == "basis":
        return [tensors[0].t().unsqueeze(1).contiguous()]
    raise AssertionError(kind)


def _dead_cross(dim: int, attn_dim: int, like: torch.Tensor) -> dict:
    """The reference's unused first cross block (``separator.cross.0.*``): zeros (BatchNorm
    variances 1); it never affects the reference's output."""
    with torch.device("meta"):
        block = CrossBlock(dim, 1, attn_dim)
    out = {}
    for key, v in block.state_dict().items():
        # our block i is the reference's i + 1: map as our block -1
        _, refs, kind = _rule(f"separator.cross.0.{key}", {})
        value = torch.ones if key.endswith("running_var") else torch.zeros
        dtype = like.dtype if v.is_floating_point() else v.dtype
        t = value(v.shape, dtype=dtype, device=like.device)
        for ref, r in zip(refs, _to_ref(kind, [t])):
            out[ref.replace("separator.cross.1.", "separator.cross.0.", 1)] = r
    return out


def to_reference_state_dict(state: dict) -> dict:
    """Our AVSEModel state dict -> the reference trainer's (keys under ``model.``).

    The inverse of :func:`convert_reference_state_dict`; the reference's unused first cross
    block is filled with zeros (unit BatchNorm variances).
    """
    ours = dict(state)
    out = {}
    for our_keys, ref_keys, kind in _rules(ours):
        for ref, t in zip(ref_keys, _to_ref(kind, [ours[k] for k in our_keys])):
            out[_REF + ref] = t
    bottleneck = ours["separator.bottleneck.weight"]
    out_s = ours.get("separator.cross.0.intra_attn.out_s.weight")
    attn_dim = out_s.shape[1] if out_s is not None else 4 * bottleneck.shape[0]
    dead = _dead_cross(bottleneck.shape[0], attn_dim, bottleneck)
    out.update({_REF + k: v for k, v in dead.items()})
    return out


def _count(ref: dict, pattern: str) -> int:
    """Distinct indices matched by ``pattern`` (one group) in the keys of ``ref``."""
    return len({m.group(1) for k in ref if (m := re.match(pattern, k))})


def _infer_config(ref: dict) -> dict:
    """AVSEModel specs of the reference checkpoint ``ref`` (keys without the prefix)."""
    need = ["encoder.conv1d_U.weight", "separator.bottleneck_conv1x1.weight",
            "separator.v_ds.weight", "separator.v_conv.0.net.2.weight",
            "separator.rnn_s.0.intra_rnn.weight_hh_l0"]
    missing = [_REF + k for k in need if k not in ref]
    if missing:
        raise ValueError(f"not a reference SEANet state dict: missing keys {', '.join(missing)}")
    n, _, win = ref["encoder.conv1d_U.weight"].shape
    bneck = ref["separator.bottleneck_conv1x1.weight"].shape[0]
    dv, emb = ref["separator.v_ds.weight"].shape
    vhidden = ref["separator.v_conv.0.net.2.weight"].shape[0]
    hidden = ref["separator.rnn_s.0.intra_rnn.weight_hh_l0"].shape[1]
    layers = _count(ref, r"separator\.rnn_s\.(\d+)\.")
    vblocks = _count(ref, r"separator\.v_conv\.(\d+)\.")
    q = ref.get("separator.cross.0.inter_cross.linear_q1.weight")
    attn_dim = q.shape[0] if q is not None else 4 * bneck
    return {"audio_encoder": {"type": "conv", "out_channels": n, "kernel_size": win},
            "visual_encoder": {"type": "embedding", "in_dim": emb, "out_dim": dv,
                               "hidden": vhidden, "num_blocks": vblocks},
            "separator": {"type": "seanet", "bottleneck": bneck, "hidden": hidden,
                          "num_layers": layers, "num_heads": 1, "attn_dim": attn_dim},
            "fusion": {"type": "concat"}}


def convert_reference_state_dict(state: dict) -> dict:
    """A reference SEANet trainer state dict (``TaoRuijie/SEANet``: keys ``model.*``) -> the
    state dict of our AVSEModel (conv encoder, ``embedding`` visual encoder, ``seanet``
    separator with the ``concat`` fusion; sizes read from the shapes).

    Shapes are transformed where the layouts differ (Linear ``[out, in]`` -> 1x1 conv
    ``[out, in, 1]``, gLN ``[1, C, 1]`` -> ``[C]``, decoder basis ``[L, N]`` ->
    ``[N, 1, L]``, q/k/v Linears concatenated, ``av_conv`` split into the fusion's audio and
    visual halves); the reference's unused first cross block is dropped. A missing,
    unexpected or wrongly shaped key raises ValueError naming it.
    Load the result with ``model.load_state_dict(..., strict=True)``.
    """
    bad_prefix = [k for k in state if not k.startswith(_REF)]
    if bad_prefix:
        raise ValueError(f"reference keys must start with {_REF!r}: {', '.join(bad_prefix[:8])}"
                         + (f", ... ({len(bad_prefix)} in all)" if len(bad_prefix) > 8 else ""))
    ref = {k[len(_REF):]: v for k, v in state.items()}
    config = _infer_config(ref)
    from avse.models.avse_model import AVSEModel  # here: avse.models imports this module

    with torch.device("meta"):
        template = AVSEModel(**config).state_dict()
    rules = _rules(template)
    expected = {k[len(_REF):]: v.shape for k, v in to_reference_state_dict(template).items()}
    parts = state_dict_problems(expected, ref, prefix=_REF)
    if parts:
        raise ValueError("cannot convert the reference SEANet state dict; " + "; ".join(parts))
    out = {}
    for our_keys, ref_keys, kind in rules:
        tensors = _from_ref(kind, [ref[k] for k in ref_keys], [template[k].shape for k in our_keys])
        out.update(zip(our_keys, tensors))
    return out
