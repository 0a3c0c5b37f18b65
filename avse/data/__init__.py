"""Data: corpus staging, shards, mixture lists, video decoding, synthetic corpus."""
