"""Visual-only speech recognition: lip ROIs @25 fps -> CTC log-probabilities over sentencepiece ids.

``front-end -> temporal model -> CTC head``:

- a front-end of :mod:`avse.models.frontends` built by registry name + config (``cnn`` for
  CPU runs, ``resnet18`` or ``dlr`` for GPUs): ``[B, Tv, H, W] -> [B, Tv, frame_dim]``;
- a temporal model: ``"conformer"`` (a linear ``frame_dim -> d_model``, SpeechBrain's
  ``ConformerEncoder`` with relative positional encodings ``RelPosEncXL``, padding masked
  from the relative lengths) or ``"tcn"`` (the :class:`~avse.models.visual_encoders.VTCN`
  of the AVSE visual encoders, ``frame_dim -> d_model``, ``num_layers`` blocks);
- a linear CTC head over ``vocab_size + 1`` classes: the sentencepiece ids, then the CTC
  blank (index ``vocab_size``).

The frame rate is kept (25 outputs a second), so a clip needs at least as many frames as
its tokens (plus one per repeated token; :func:`avse.data.loaders.text.ctc_frames_needed`).

Example
-------
>>> model = LipReadingModel(vocab_size=10, frontend_type="cnn",
...                         frontend_config={"hidden": 16, "channels": [8, 16]},
...                         temporal_type="conformer", d_model=16, num_layers=1, nhead=2,
...                         d_ffn=32)
>>> lips = torch.randint(0, 256, (2, 12, 88, 88), dtype=torch.uint8)
>>> model(lips, torch.tensor([1.0, 0.5])).shape, model.blank_index
(torch.Size([2, 12, 11]), 10)
"""
from __future__ import annotations

import torch
from torch import nn

from avse.models.frontends import build_frontend, load_frontend_weights
from avse.models.visual_encoders import VTCN

TEMPORAL_TYPES = ("conformer", "tcn")


class LipReadingModel(nn.Module):
    """lips ``[B, Tv, H, W]`` @25 fps (uint8 0..255, or float on that scale) + relative
    lengths ``[B]`` -> CTC log-probabilities ``[B, Tv, vocab_size + 1]`` (blank last).

    Arguments
    ---------
    vocab_size : int
        sentencepiece pieces (the shards' meta.json ``vocab_size``).
    frontend_type : str
        a front-end registry name (``cnn``, ``resnet18``, ``dlr``).
    frontend_config : dict
        its constructor kwargs.
    temporal_type : str
        ``"conformer"`` or ``"tcn"``.
    d_model : int
        width of the temporal model (and the CTC head's input).
    num_layers : int
        conformer layers, or V-TCN blocks.
    nhead, d_ffn : int
        conformer attention heads and feed-forward width.
    kernel_size : int or None
        depthwise conv kernel (None: 31 for the conformer, 3 for the V-TCN; odd).
    dropout : float
        conformer dropout, and before the CTC head.
    tcn_hidden : int or None
        expansion width inside the V-TCN blocks (None: ``d_model``).
    pretrained : str or None
        a front-end file loaded into the front-end (type and config must match;
        :func:`~avse.models.frontends.load_frontend_weights`).
    """

    def __init__(self, vocab_size: int, frontend_type: str = "cnn", frontend_config=None,
                 temporal_type: str = "conformer", d_model: int = 256, num_layers: int = 6,
                 nhead: int = 4, d_ffn: int = 1024, kernel_size: int | None = None,
                 dropout: float = 0.1, tcn_hidden: int | None = None,
                 pretrained: str | None = None):
        super().__init__()
        if temporal_type not in TEMPORAL_TYPES:
            raise ValueError(f"temporal_type {temporal_type!r}: use one of {TEMPORAL_TYPES}")
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        frontend_config = dict(frontend_config or {})
        self.config = dict(vocab_size=int(vocab_size), frontend_type=frontend_type,
                           frontend_config=frontend_config, temporal_type=temporal_type,
                           d_model=int(d_model), num_layers=int(num_layers), nhead=int(nhead),
                           d_ffn=int(d_ffn), kernel_size=kernel_size, dropout=float(dropout),
                           tcn_hidden=tcn_hidden)
        self.vocab_size, self.temporal_type = int(vocab_size), temporal_type
        self.frontend = build_frontend(frontend_type, **frontend_config)
        if pretrained:
            load_frontend_weights(self.frontend, str(pretrained))
        frame_dim = self.frontend.frame_dim
        if temporal_type == "conformer":
            from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
            from speechbrain.nnet.attention import RelPosEncXL

            self.proj = nn.Linear(frame_dim, d_model)
            self.pos_enc = RelPosEncXL(d_model)
            self.temporal = ConformerEncoder(num_layers, d_model, d_ffn, nhead,
                                             kernel_size=kernel_size or 31, dropout=dropout)
        else:
            self.temporal = VTCN(frame_dim, d_model, tcn_hidden, num_layers, kernel_size or 3)
        self.dropout = nn.Dropout(dropout)
        self.ctc_head = nn.Linear(d_model, self.vocab_size + 1)

    @property
    def blank_index(self) -> int:
        """The CTC blank: the class after the sentencepiece ids."""
        return self.vocab_size

    def encode(self, lips: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """lips ``[B, Tv, H, W]`` -> temporal features ``[B, Tv, d_model]``."""
        feats = self.frontend(lips)                              # [B, Tv, frame_dim]
        if self.temporal_type == "tcn":
            return self.temporal(feats.transpose(1, 2)).transpose(1, 2)
        x = self.proj(feats)
        pad = None
        if lengths is not None:
            frames = torch.round(lengths.to(x.device).float() * x.shape[1]).long()
            pad = torch.arange(x.shape[1], device=x.device)[None, :] >= frames[:, None]
        out, _ = self.temporal(x, src_key_padding_mask=pad, pos_embs=self.pos_enc(x))
        return out

    def forward(self, lips: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """lips ``[B, Tv, H, W]``, relative lengths ``[B]`` -> log-probs ``[B, Tv, vocab + 1]``."""
        logits = self.ctc_head(self.dropout(self.encode(lips, lengths)))
        return torch.log_softmax(logits.float(), dim=-1)


def frontend_state(model_state: dict, prefix: str = "frontend.") -> dict:
    """The front-end's weights out of a :class:`LipReadingModel` state dict (e.g. a checkpoint's
    ``model.ckpt``), keys without ``prefix``."""
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
