"""Model slots and built-in plugins. Importing this package registers every built-in."""
from avse.models import base  # noqa: F401  (declares the slot bases first)
from avse.models.avse_model import AVSEModel  # noqa: F401
from avse.models.base import ModelOutput, SeparatorOutput  # noqa: F401
from avse.models.io import load_model, save_model  # noqa: F401

for _module in ("audio_encoders", "decoders", "visual_encoders", "fusion", "separators"):
    try:
        __import__(f"avse.models.{_module}")
    except ModuleNotFoundError as _err:  # a family not written yet must not hide the others
        if _err.name != f"avse.models.{_module}":
            raise
