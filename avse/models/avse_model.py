"""AVSEModel: audio encoder -> separator (with fusion inside) -> masks -> decoder; optionally
an activity head (does the target speak in each video frame?)."""
from __future__ import annotations

import inspect
import json

import torch
from torch import nn

from avse.models import registry
from avse.models.base import ModelOutput, build_slot, hold_index
from avse.models.activity import ActivityHead

SAMPLE_RATE = 16000


def _causal_spec(kind: str, spec, optional: bool = False):
    """``spec`` as a dict with ``causal: True``; ValueError when the plugin has no such option
    (``optional``: the spec as given then, for a caller that checks the plugin otherwise)."""
    if isinstance(spec, nn.Module):
        if not getattr(spec, "causal", False) and not optional:
            raise ValueError(f"causal=True: give the {kind} as a spec, not a built module")
        return spec
    if kind == "fusion" and spec in (None, "none"):
        return spec  # no fusion block (the separator fuses itself): nothing to make causal
    spec = dict(spec) if isinstance(spec, dict) else {"type": spec}
    cls = registry.get(kind, spec.get("type"))
    if "causal" not in inspect.signature(cls.__init__).parameters:
        if optional:
            return spec
        raise ValueError(f"causal=True: the {kind} {spec.get('type')!r} has no causal form")
    return {**spec, "causal": True}


class AVSEModel(nn.Module):
    """Compose the five slots into one audio-visual target speaker extractor.

    Arguments
    ---------
    audio_encoder, visual_encoder, separator : spec
        each a built module, or a spec ``{"type": short name or class path, **kwargs}``
        (or just the short name). Specs are built here so that dimensions are wired from
        ``out_dim``: the separator gets ``in_dim`` and ``visual_dim``.
    fusion : spec
        handed to the separator, which builds its fusion block(s) where its architecture
        fuses.
    decoder : spec, optional
        default: the decoder registered under the audio encoder's short name, built with
        the encoder's ``decoder_kwargs()``.
    activity_head : dict or bool, optional
        ``{"hidden": 64, ...}`` (:class:`~avse.models.activity.ActivityHead` options; True:
        the defaults): a per-frame estimate of whether the target speaks, returned as logits
        ``aux["activity"] [B, Tv]`` (trained with the ``bce`` aux loss against the batch's
        ``activity``; ``avse-extract --gate`` uses it). None (default): no head.
    causal : bool
        False (default): the parts as their specs say. True: ``causal: true`` is added to the
        visual encoder's, the fusion's and the separator's specs (ValueError for a plugin that
        has no causal form, with an activity head, which looks ahead, and with an audio encoder
        that states no ``lookahead``, i.e. not ``conv``) and to the audio encoder's and the
        decoder's (causal framing: frame j covers samples ``[j S - (L - S), j S + S)``); the
        visual features are resampled to the audio frames with
        :func:`~avse.models.base.hold_index` (each audio frame sees the latest video frame
        started at or before its last sample) before the separator. The output at sample n
        then depends on input up to n + :meth:`latency_samples` only, and the model runs
        block by block with :class:`avse.streaming.StreamingModel`.

    Example
    -------
    >>> m = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
    ...               {"type": "embedding", "hidden": 16, "num_blocks": 1},
    ...               {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2, "num_repeats": 1},
    ...               fusion="concat")
    >>> out = m(torch.randn(2, 6400), torch.randn(2, 10, 512))
    >>> out.estimate.shape
    torch.Size([2, 6400])
    """

    def __init__(self, audio_encoder, visual_encoder, separator, fusion="concat", decoder=None,
                 activity_head=None, causal: bool = False):
        super().__init__()
        specs = {"audio_encoder": audio_encoder, "visual_encoder": visual_encoder,
                 "separator": separator, "fusion": fusion, "decoder": decoder}
        if activity_head not in (None, False):
            activity_head = {} if activity_head is True else dict(activity_head)
            specs["activity_head"] = activity_head
        self.causal = bool(causal)
        if self.causal:  # only then: a default model's config (model.yaml) is as before
            specs["causal"] = True
            if "activity_head" in specs:
                raise ValueError("causal=True: the activity head looks ahead (centred convs, "
                                 "whole-utterance norm); leave activity_head out")
            visual_encoder = _causal_spec("visual_encoder", visual_encoder)
            separator = _causal_spec("separator", separator)
            fusion = _causal_spec("fusion", fusion)
        try:  # plain-data specs are kept so the model can be exported and rebuilt (models.io)
            self.config = json.loads(json.dumps(specs))
        except TypeError:  # built modules or classes: not serialisable
            self.config = None
        if self.causal:  # causal framing where the encoder has it; else refused below
            audio_encoder = _causal_spec("audio_encoder", audio_encoder, optional=True)
        self.audio_encoder = build_slot("audio_encoder", audio_encoder)
        if self.causal and getattr(self.audio_encoder, "lookahead", None) is None:
            raise ValueError(f"causal=True: the audio encoder {type(self.audio_encoder).__name__} "
                             "states no look-ahead (use 'conv')")
        self.visual_encoder = build_slot("visual_encoder", visual_encoder)
        self.separator = build_slot("separator", separator, in_dim=self.audio_encoder.out_dim,
                                visual_dim=self.visual_encoder.out_dim, fusion=fusion)
        if decoder is None:
            decoder = {"type": getattr(self.audio_encoder, "registry_name", None),
                       **self.audio_encoder.decoder_kwargs()}
        elif self.causal:
            decoder = _causal_spec("decoder", decoder, optional=True)
        self.decoder = build_slot("decoder", decoder)
        self.activity_head = None
        if "activity_head" in specs:
            self.activity_head = ActivityHead(audio_dim=self.audio_encoder.out_dim,
                                              visual_dim=self.visual_encoder.out_dim,
                                              **specs["activity_head"])

    def latency_samples(self) -> int | None:
        """Algorithmic latency in samples (None: not causal, the whole utterance).

        Causal parts look at no future frame (the visual stream is held: each audio frame
        sees the latest video frame), so the latency is the audio encoder's ``lookahead``:
        for ``conv`` one window L (an output sample needs the window that covers it, which
        ends up to L - 1 samples later; the block is the L / 2 hop inside it). None when the
        model is not causal.
        """
        lookahead = getattr(self.audio_encoder, "lookahead", None)
        if not self.causal or lookahead is None:
            return None
        return int(lookahead)

    def latency_ms(self) -> float | None:
        """:meth:`latency_samples` in milliseconds at 16 kHz (None: non-causal).

        >>> m = AVSEModel({"type": "conv", "out_channels": 8, "kernel_size": 32},
        ...               {"type": "embedding", "hidden": 8, "num_blocks": 1, "norm": "cln"},
        ...               {"type": "tcn", "bottleneck": 8, "hidden": 8, "num_blocks": 1,
        ...                "num_repeats": 1, "norm": "cln"}, causal=True)
        >>> m.latency_ms()
        2.0
        """
        samples = self.latency_samples()
        return None if samples is None else 1000.0 * samples / SAMPLE_RATE

    @property
    def has_activity_head(self) -> bool:
        """Whether the model estimates the target's activity (``aux["activity"]``)."""
        return self.activity_head is not None

    @property
    def visual_input(self) -> str:
        """``"roi"`` or ``"emb"``: what the visual encoder expects."""
        return self.visual_encoder.input_kind

    def _decode(self, feats, mask, length):
        est = feats * mask if self.separator.output_type == "mask" else mask
        return self.decoder(est, length)

    def forward(self, mixture: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> ModelOutput:
        """mixture ``[B, T]`` @16 kHz, visual ``[B, Tv, 88, 88]`` or ``[B, Tv, 512]`` @25 fps.

        Only the final estimate is decoded unless ``return_intermediate`` (deep supervision
        during training) asks for the earlier ones and the auxiliary intermediate outputs.
        """
        if mixture.dim() != 2:
            raise ValueError(f"mixture must be [B, T], got {list(mixture.shape)}")
        length = mixture.shape[-1]
        feats = self.audio_encoder(mixture)
        vfeats = self.visual_encoder(visual)
        if self.causal:  # each audio frame: the latest video frame started by its last sample
            vfeats = vfeats.index_select(-1, hold_index(feats.shape[-1], self.audio_encoder.stride,
                                                        vfeats.shape[-1], vfeats.device))
        sep = self.separator(feats, vfeats, return_intermediate=return_intermediate)
        estimate = self._decode(feats, sep.masks[-1], length)
        intermediate = []
        if return_intermediate:
            intermediate = [self._decode(feats, m, length) for m in sep.masks[:-1]]
        aux = dict(sep.aux)
        if self.activity_head is not None:
            est_feats = feats * sep.masks[-1] if self.separator.output_type == "mask" \
                else sep.masks[-1]
            aux["activity"] = self.activity_head(mixture, estimate, feats, est_feats, vfeats)
        for name, masks in sep.aux_masks.items():
            aux[name] = self._decode(feats, masks[-1], length)
            if return_intermediate and len(masks) > 1:
                aux[name + "_intermediate"] = [self._decode(feats, m, length) for m in masks[:-1]]
        return ModelOutput(estimate, intermediate, aux)
