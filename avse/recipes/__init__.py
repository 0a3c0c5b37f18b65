"""Corpus preparation: raw corpora -> manifests -> extracted features -> shards -> lists.

One module per corpus (``voxceleb2``, ``lrs2``, ``lrs3``, ``musan``; the evaluation corpora
``tcdtimit`` and ``grid``) holds its layout,
splits and metadata, with the same shape everywhere: ``prepare_<corpus>(corpus_dir,
out_dir, ...)`` plus one CLI subcommand per stage, called by ``recipes/<Corpus>/run.sh``.
What they share lives below them, and no corpus module imports another:

- :mod:`avse.recipes.stages`: the audio-visual stages (probe, manifest, extract of audio +
  mouth ROI or lip embeddings, shards, VoxMix lists) and their subcommands;
- :mod:`avse.recipes.transcripts`: LRS transcripts, the sentencepiece tokens stage, and
  shards with transcript fields (LRS2, LRS3);
- :mod:`avse.recipes.embed`: the embedding stage (lip embeddings of prepared shards with any
  visual front-end, as ``emb.npy`` shards for the ``embedding`` visual encoder);
- :mod:`avse.recipes.common`: parallel map, rejected.tsv, ``.done`` markers, atomic writes,
  the per-split shard loop, summary lines, the command-line frame.
"""
