"""Corpus preparation: raw corpora -> manifests -> extracted features -> shards -> lists.

Every corpus module has the same shape (``prepare_<corpus>(corpus_dir, out_dir, ...)``
plus one CLI subcommand per stage), called by ``recipes/<Corpus>/run.sh``.
"""
