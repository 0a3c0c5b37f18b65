"""AVSE: audio-visual target speaker extraction."""

__version__ = "0.1.0"
