"""Converters for released checkpoints: someone else's state dict <-> our AVSEModel's.

Adapters live apart from the models they adapt: the separators know nothing of these
layouts. One module per reference, one rule engine, one command:

=========  ==========================================================================
module     reference
=========  ==========================================================================
rules      the engine: key templates, transforms, checks (:class:`rules.Reference`)
seanet     SEANet of the SEANet repository (``TaoRuijie/SEANet``, ``model/seanet.py``)
dprnn      its AV-DPRNN (``model/dprnn.py``); the front rules SEANet shares
muse       its MuSE (``model/muse.py``)
avsep      its AV-Sepformer (``model/avsep.py``)
cli        ``avse-convert-seanet``: a trainer checkpoint -> an exported model folder
=========  ==========================================================================

Each reference module has ``reference_config(state=None)`` (the AVSEModel specs of the
reference), ``convert_reference_state_dict(state, model=None)`` (reference -> ours, keys and
shapes checked) and ``to_reference_state_dict(state)`` (its inverse).
"""
