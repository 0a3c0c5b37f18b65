"""AV-DPRNN: dual-path BLSTM extractor with the visual stream fused once at its input.

After the AV-DPRNN baseline of the SEANet paper (Tao et al.): global layer norm and a
1x1 bottleneck ``N -> B``, fusion with the visual features (the reference concatenates the
upsampled visual features and projects ``B + Dv -> B``: the ``concat`` fusion), 50 %
overlapping chunks of K frames, R dual-path blocks (intra-chunk BLSTM, linear, gLN,
residual; then the same across chunks), overlap-add, and a mask head (PReLU, 1x1 conv
``B -> N``, ReLU) shared by all repeats, so each repeat yields an estimate (deep
supervision).

Internally the chunked tensor is kept channels-last, ``[M, S, K, B]`` (M batch, S chunks,
K frames per chunk), which is the layout the LSTMs and linears read without copies.

The chunking is the reference's by default (``padding="reference"``): ``K/2`` zero frames
before the L frames and ``gap + K/2`` after, with ``gap = K - (K/2 + L mod K) mod K``
(1..K), so ``S = (L + gap + K/2) / (K/2)`` chunks (66 for 4 s with a 20-sample hop).
``padding="minimal"`` pads only up to the next multiple of K/2 (``S = ceil(L / (K/2)) + 1``,
65 for 4 s): the chunking of models trained before the reference padding was adopted.

With the reference's weights (:func:`convert_reference_state_dict`) and the fusion
``{type: concat, align: linear}`` (the reference upsamples the visual stream linearly), the
model reproduces the reference AV-DPRNN (``TaoRuijie/SEANet``, ``model/dprnn.py``; 4.12 M
parameters): measured against the reference code on 4 s inputs ``[2, 64000]`` +
``[2, 100, 512]`` in eval mode, the max deviation of every one of the R estimates is 6.3e-7
of the output's peak in float32 (1.2e-15 in float64). With ``padding="minimal"`` it is about
0.1 of the peak, with the default nearest-neighbour visual alignment about 0.4.

Example
-------
>>> import torch
>>> sep = DPRNNSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=8, chunk_size=10,
...                      num_layers=2)
>>> out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
>>> [m.shape for m in out.masks]
[torch.Size([2, 16, 37]), torch.Size([2, 16, 37])]
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.io import state_dict_problems
from avse.models.base import Separator, SeparatorOutput, build_fusion
from avse.models.registry import register

__all__ = ["DPRNNSeparator", "DualPathBlock", "GlobalNormLast", "overlap_add", "segment",
           "reference_num_chunks",
           "reference_config", "convert_reference_state_dict", "to_reference_state_dict"]

_MASK_ACTS = {"relu": F.relu, "sigmoid": torch.sigmoid, "none": None}
_PADDINGS = ("reference", "minimal")


def reference_gap(length: int, chunk_size: int) -> int:
    """Frames the reference appends before its K/2 end padding: ``K - (K/2 + L mod K) mod K``
    (1..K), so that ``L + gap + K/2`` is a multiple of K."""
    return chunk_size - (chunk_size // 2 + length % chunk_size) % chunk_size


def reference_num_chunks(length: int, chunk_size: int) -> int:
    """S of the reference chunking of L frames: ``(L + gap + K/2) / (K/2)``."""
    hop = chunk_size // 2
    return (length + reference_gap(length, chunk_size) + hop) // hop


def segment(x: torch.Tensor, hop: int, num_chunks: int | None = None) -> torch.Tensor:
    """x ``[M, L, D]`` -> chunks ``[M, S, 2 hop, D]`` overlapping by half; chunk j starts at
    frame ``(j - 1) hop`` (``hop`` zero frames before, zeros after up to ``(S + 1) hop``).

    ``num_chunks`` (S) defaults to the fewest that cover every frame twice,
    ``ceil(L / hop) + 1``; the reference chunking passes :func:`reference_num_chunks`.
    """
    m, length, d = x.shape
    s = -(-length // hop) + 1 if num_chunks is None else int(num_chunks)
    x = F.pad(x, (0, 0, hop, (s + 1) * hop - hop - length))  # [M, (S+1) hop, D]
    halves = x.view(m, s + 1, hop, d)
    return torch.cat((halves[:, :-1], halves[:, 1:]), dim=2)


def overlap_add(chunks: torch.Tensor, length: int, hop: int) -> torch.Tensor:
    """chunks ``[M, S, 2 hop, D]`` -> ``[M, L, D]``: each frame summed over its two chunks
    (the inverse of :func:`segment` up to that sum)."""
    m, s, _, d = chunks.shape
    # half-chunk j of the padded sequence = first half of chunk j + second of chunk j-1;
    # the padded first/last halves hold no real frame, so only the middle is summed
    mid = (chunks[:, 1:, :hop] + chunks[:, :-1, hop:]).view(m, (s - 1) * hop, d)
    return mid[:, :length]


class GlobalNormLast(nn.Module):
    """Global layer norm (gLN) of a channels-last tensor ``[M, ..., C]``.

    Mean and variance over every axis but the batch one (as ``GroupNorm(1, C)`` on the
    channels-first layout), then a per-channel affine map.
    """

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, ..., C]`` -> same shape."""
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[1:], eps=self.eps), self.weight)


class DualPathBlock(nn.Module):
    """One dual-path block on chunks ``[M, S, K, D]``.

    ``x = x + gLN(Linear(RNN_intra(x)))`` along the K frames of each chunk, then
    ``x = x + gLN(Linear(RNN_inter(x)))`` along the S chunks for each frame position.

    Arguments
    ---------
    dim : int
        D, the feature size (bottleneck B).
    hidden : int
        H, the RNN hidden size per direction.
    rnn_type : str
        ``"LSTM"`` (reference), ``"GRU"`` or ``"RNN"``.
    bidirectional : bool
        the reference uses BLSTMs for both paths.
    """

    def __init__(self, dim: int, hidden: int, rnn_type: str = "LSTM", bidirectional: bool = True):
        super().__init__()
        rnn = getattr(nn, rnn_type)
        out = hidden * (2 if bidirectional else 1)
        self.intra_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.intra_linear = nn.Linear(out, dim)
        self.intra_norm = GlobalNormLast(dim)
        self.inter_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.inter_linear = nn.Linear(out, dim)
        self.inter_norm = GlobalNormLast(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, S, K, D]`` (contiguous) -> ``[M, S, K, D]`` (contiguous)."""
        m, s, k, d = x.shape
        y, _ = self.intra_rnn(x.view(m * s, k, d))  # [M*S, K, 2H]
        x = x + self.intra_norm(self.intra_linear(y).view(m, s, k, d))
        xt = x.transpose(1, 2).reshape(m * k, s, d)  # [M*K, S, D], one copy
        y, _ = self.inter_rnn(xt)  # [M*K, S, 2H]
        y = self.inter_norm(self.inter_linear(y).view(m, k, s, d))
        return (xt.view(m, k, s, d) + y).transpose(1, 2).contiguous()


@register("separator", "dprnn")
class DPRNNSeparator(Separator):
    """AV-DPRNN separator: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> masks ``[B, N, L]``.

    Arguments
    ---------
    in_dim : int
        N, encoder channels (reference 256).
    visual_dim : int
        Dv, visual encoder channels.
    fusion : spec
        fusion at the bottleneck, built with ``audio_dim=B``; default ``"concat"``; the
        reference is ``{type: concat, align: linear}`` (linear upsampling of the visual
        stream). A fusion whose ``out_dim != B`` is followed by a 1x1 conv to B.
    bottleneck : int
        B (reference 64).
    hidden : int
        H, RNN hidden size per direction (reference 128).
    chunk_size : int
        K, frames per chunk (reference 100; even, chunks overlap by K/2).
    num_layers : int
        R, dual-path blocks (reference 6); each gives an estimate.
    mask_act : str
        ``"relu"`` (reference), ``"sigmoid"`` or ``"none"``.
    rnn_type : str
        ``"LSTM"`` (reference), ``"GRU"`` or ``"RNN"``.
    bidirectional : bool
        bidirectional RNNs (reference True).

    ``forward(..., return_intermediate=True)`` returns R masks (one per block, the last
    is the final one); otherwise only the final mask is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 mask_act: str = "relu", rnn_type: str = "LSTM", bidirectional: bool = True,
                 padding: str = "reference"):
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"chunk_size must be even and >= 2 (50 % overlap), got {chunk_size}")
        if mask_act not in _MASK_ACTS:
            raise ValueError(f"mask_act must be one of {sorted(_MASK_ACTS)}, got {mask_act!r}")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {list(_PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.in_dim, self.bottleneck_dim = int(in_dim), int(bottleneck)
        self.chunk_size, self.hop = int(chunk_size), int(chunk_size) // 2
        self.num_layers = int(num_layers)
        self.norm = nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        self.fusion = build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
        self.fusion_proj = (nn.Conv1d(self.fusion.out_dim, bottleneck, 1, bias=False)
                            if self.fusion.out_dim != bottleneck else None)
        self.blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type, bidirectional)
                                    for _ in range(num_layers))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, in_dim, 1, bias=False)
        self.mask_act = mask_act

    def num_chunks(self, length: int) -> int:
        """S, the number of chunks :meth:`_chunk` makes of L frames."""
        if self.padding == "reference":
            return reference_num_chunks(length, self.chunk_size)
        return -(-length // self.hop) + 1

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]`` with the separator's ``padding``.

        ``"reference"``: ``gap`` zero frames appended (see :func:`reference_gap`), then
        :meth:`_segment`; chunk j starts at padded frame ``j K/2`` as in the reference.
        """
        if self.padding == "reference":
            x = F.pad(x, (0, 0, 0, reference_gap(x.shape[1], self.chunk_size)))
        return self._segment(x)

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]``, ``S = ceil(L / (K/2)) + 1``.

        K/2 zero frames before, enough after, so that every frame lies in two chunks (the
        minimal padding; :meth:`_chunk` adds the reference's). Reads only ``self.hop``:
        AV-Sepformer reuses it.
        """
        return segment(x, self.hop)

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, D]`` -> ``[M, L, D]`` (inverse of :meth:`_segment` up to the sum)."""
        return overlap_add(chunks, length, self.hop)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, B]`` -> mask ``[M, N, L]``."""
        mask = self.mask_conv(self.mask_prelu(x).transpose(1, 2))
        act = _MASK_ACTS[self.mask_act]
        return act(mask) if act is not None else mask

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``)."""
        length = feats.shape[-1]
        x = self.fusion(self.bottleneck(self.norm(feats)), visual)  # [B, B', L]
        if self.fusion_proj is not None:
            x = self.fusion_proj(x)
        chunks = self._chunk(x.transpose(1, 2))  # [B, S, K, B']
        masks = []
        for i, block in enumerate(self.blocks):
            chunks = block(chunks)
            if return_intermediate or i == self.num_layers - 1:
                masks.append(self._mask(self._overlap_add(chunks, length)))
        return SeparatorOutput(masks)


# ------------------------------------------------------------------ reference checkpoints
#
# The reference trainer's state dict (``trainer.state_dict()``, every key under ``model.``;
# ``TaoRuijie/SEANet``, ``model/dprnn.py``) <-> AVSEModel(conv encoder, embedding visual
# encoder, dprnn separator with the concat fusion). The layout is SEANet's speech branch
# (``rnn_s``, ``adder_s``, ``decoder_s``) without the cross blocks and the noise branch, so
# the rules and transforms are SEANet's (:mod:`avse.models.separators.seanet`), with our
# ``separator.blocks`` in the place of its ``separator.speech_blocks``.

_REF = "model."
_RENAMES = (("separator.adder.", "separator.adder_s."), ("decoder.basis_signals.",
                                                         "decoder_s.basis_signals."))


def reference_config() -> dict:
    """AVSEModel arguments of the reference AV-DPRNN (4.12 M parameters), as in
    ``egs/voxceleb2/hparams/dprnn.yaml``: conv encoder/decoder N=256, L=40; the 512-d
    lip-embedding front (``v_ds`` 512 -> 256, five gLN V-TCN blocks of width 512); B=64,
    H=128, K=100, R=6; the concat fusion with linear upsampling of the visual stream."""
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 40},
            "visual_encoder": {"type": "embedding"},
            "separator": {"type": "dprnn", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                          "num_layers": 6, "padding": "reference"},
            "fusion": {"type": "concat", "align": "linear"}}


def _rules(ours: dict) -> list:
    """(our keys, reference keys without the prefix, transform) for every key of ``ours``;
    ValueError names our keys that the reference format cannot hold."""
    from avse.models.separators import seanet  # here: seanet imports this module

    rules, seen, bad = [], set(), []
    for key in ours:
        if key in seen:
            continue
        if key.startswith(("separator.speech_blocks.", "separator.noise_blocks.",
                           "separator.cross.")):
            bad.append(key)
            continue
        alias = re.sub(r"^separator\.blocks\.", "separator.speech_blocks.", key)
        rule = seanet._rule(alias, ours)
        if rule is None:
            bad.append(key)
            continue
        our_keys = tuple(re.sub(r"^separator\.speech_blocks\.", "separator.blocks.", k)
                         for k in rule[0])
        refs = []
        for ref in rule[1]:
            for old, new in _RENAMES:
                if ref.startswith(old):
                    ref = new + ref[len(old):]
            refs.append(ref)
        seen.update(our_keys)
        rules.append((our_keys, tuple(refs), rule[2]))
    if bad:
        raise ValueError("not representable in the reference AV-DPRNN format (it needs the "
                         "conv encoder, the embedding visual encoder and the dprnn separator "
                         f"with the concat fusion): {', '.join(bad)}")
    return rules


def to_reference_state_dict(state: dict) -> dict:
    """Our AVSEModel state dict -> the reference trainer's (keys under ``model.``); the
    inverse of :func:`convert_reference_state_dict`."""
    from avse.models.separators import seanet

    ours = dict(state)
    out = {}
    for our_keys, ref_keys, kind in _rules(ours):
        for ref, t in zip(ref_keys, seanet._to_ref(kind, [ours[k] for k in our_keys])):
            out[_REF + ref] = t
    return out


def _head(keys, limit: int = 8) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_reference_state_dict(state: dict, config: dict | None = None) -> dict:
    """A reference AV-DPRNN trainer state dict (``TaoRuijie/SEANet``: keys ``model.*``) ->
    the state dict of the AVSEModel built from ``config`` (default :func:`reference_config`).

    Shapes are transformed where the layouts differ (Linear ``[out, in]`` -> 1x1 conv
    ``[out, in, 1]``, gLN ``[1, C, 1]`` -> ``[C]``, decoder basis ``[L, N]`` ->
    ``[N, 1, L]``, ``av_conv`` split into the fusion's audio and visual halves). A missing,
    unexpected or wrongly shaped key raises ValueError naming it. Load the result with
    ``model.load_state_dict(..., strict=True)``.
    """
    from avse.models.avse_model import AVSEModel  # here: avse.models imports this module
    from avse.models.separators import seanet

    bad_prefix = [k for k in state if not k.startswith(_REF)]
    if bad_prefix:
        raise ValueError(f"reference keys must start with {_REF!r}: {_head(bad_prefix)}")
    ref = {k[len(_REF):]: v for k, v in state.items()}
    with torch.device("meta"):
        template = AVSEModel(**(config or reference_config())).state_dict()
    rules = _rules(template)
    expected = {k[len(_REF):]: v.shape for k, v in to_reference_state_dict(template).items()}
    parts = state_dict_problems(expected, ref, prefix=_REF)
    if parts:
        raise ValueError("cannot convert the reference AV-DPRNN state dict; " + "; ".join(parts))
    out = {}
    for our_keys, ref_keys, kind in rules:
        tensors = seanet._from_ref(kind, [ref[k] for k in ref_keys],
                                   [template[k].shape for k in our_keys])
        out.update(zip(our_keys, tensors))
    return out
