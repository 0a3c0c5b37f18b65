"""Streaming: causal models run block by block (issue 14).

:class:`StreamingModel` (:mod:`avse.streaming.core`) takes audio in blocks of any size and
lip frames as they come and returns the output block by block, equal to the offline
output of the same causal model; :class:`StreamStep` and :class:`VisualStep`
(:mod:`avse.streaming.step`) are the fixed-block steps with explicit state for export. The
parts stream through *steppers* (:mod:`avse.streaming.registry`): the audio path's in
:mod:`avse.streaming.audio`, the visual encoders' and other separators' in their own modules
of this package, found on the first look-up.

Example (``model`` a causal AVSEModel)::

    from avse.streaming import StreamingModel
    stream = StreamingModel(model)
    out = [stream.push(block, frames) for block, frames in source] + [stream.flush()]
"""
from avse.streaming.core import StreamingModel, check_streamable
from avse.streaming.registry import register_stepper, stepper_for
from avse.streaming.step import StreamStep, VisualStep

__all__ = ["StreamingModel", "StreamStep", "VisualStep", "check_streamable", "register_stepper",
           "stepper_for"]
