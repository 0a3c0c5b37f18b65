"""Data loaders: from staged shards to :class:`AVBatch` batches.

- :func:`make_train_loader` (:mod:`avse.data.loaders.dynamic`): dynamic mixing for
  training, endless, equal steps per DDP rank.
- :func:`make_list_loader` (:mod:`avse.data.loaders.list_mode`): the rows of a VoxMix
  list, by key (training, validation, test).
- :mod:`avse.data.loaders.batch`: :class:`AVBatch`, collating, making one example.
- :func:`make_text_loader` (:mod:`avse.data.loaders.text`): lips + transcripts
  (:class:`TextBatch`) for lip reading, with the curriculum's cutting at word boundaries.
- :mod:`avse.data.loaders.face_crops`: face shards (``--crop face``): each loader's
  ``mouth_crop``, the model's preset, cut from the face frames at load time.
"""
from avse.data.loaders.batch import AVBatch, collate_examples, decode_utterance, finish_example
from avse.data.loaders.dynamic import DynamicMixDataset, EpochLoader, make_train_loader
from avse.data.loaders.list_mode import (STAGE_SETS, EpochSampler, ListLoader, ListMixDataset,
                                         make_list_loader, select_rows)
from avse.data.loaders.text import TextBatch, TextLoader, make_text_loader

__all__ = ["AVBatch", "collate_examples", "decode_utterance", "finish_example",
           "DynamicMixDataset", "EpochLoader", "make_train_loader", "STAGE_SETS", "EpochSampler",
           "ListLoader", "ListMixDataset", "make_list_loader", "select_rows", "TextBatch",
           "TextLoader", "make_text_loader"]
