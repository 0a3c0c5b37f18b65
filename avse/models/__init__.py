"""Model slots and built-in plugins. Importing this package registers every built-in."""
from avse.models import base  # noqa: F401  (declares the slot bases first)
from avse.models import audio_encoders, decoders, fusion, separators, visual_encoders  # noqa: F401
from avse.models.avse_model import AVSEModel  # noqa: F401
from avse.models.base import ModelOutput, SeparatorOutput  # noqa: F401
from avse.models.io import load_model, save_model  # noqa: F401
