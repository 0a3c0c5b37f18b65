"""AVSE: audio-visual target speaker extraction toolkit."""
from setuptools import find_packages, setup

setup(
    name="avse",
    version="0.1.0",
    description="Audio-visual target speaker extraction: recipes, plugins and a SpeechBrain Brain",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["avse", "avse.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "speechbrain>=1.0.1,<1.2",  # AVSEBrain reads internals: tests/unit/test_speechbrain_contract.py
        "hyperpyyaml>=1.2",
        "webdataset>=0.2.90",
        "soundfile>=0.12",
        "sentencepiece>=0.1.99",
        "av>=12",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm>=4.60",
        "pyyaml>=6",
        "Pillow>=9",
        "matplotlib>=3.6",
        "tensorboard>=2.10",  # the egs' tensorboard_logger (speechbrain's TensorboardLogger)
        # MTCNN face detector for avse-extract on real videos; its weights ship in the wheel.
        # Exactly 2.5.3: 2.6.0 pins torch<2.3.
        "facenet-pytorch==2.5.3",
    ],
    extras_require={
        # PESQ and STOI in evaluation; without them those columns are NaN (one log line says so)
        "eval": ["pesq>=0.0.4", "pystoi>=0.3"],
        # opencv: tests/integration/test_lipread_opencv.py runs the original OpenCV
        # preprocessing of the published lip-reading front-end (4.x: numpy 2 wheels)
        # pytest-xdist: `make test` runs the suite on every core (pytest.ini: -n auto)
        # onnxscript, onnxruntime: avse-export --format onnx and its round-trip tests
        "dev": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3", "fast_bss_eval",
                "scikit-image>=0.21", "opencv-python-headless>=4.10", "onnxscript>=0.5",
                "onnxruntime>=1.20"],
        # the real-face test and demo videos (avse.video.scenes) use scikit-image's photo
        "scenes": ["scikit-image>=0.21"],
    },
    entry_points={
        "console_scripts": [
            "avse-make-synthetic-corpus=avse.data.synthetic:main",
            "avse-prepare-voxceleb2=avse.recipes.voxceleb2:main",
            "avse-prepare-lrs2=avse.recipes.lrs2:main",
            "avse-prepare-lrs3=avse.recipes.lrs3:main",
            "avse-prepare-musan=avse.recipes.musan:main",
            "avse-conditions=avse.evaluation.conditions:main",
            "avse-eval-sync=avse.evaluation.sync_sweep:main",
            "avse-inspect-shards=avse.data.shards:main",
            "avse-extract=avse.inference:main",
            "avse-convert-seanet=avse.models.reference.cli:main",
            "avse-embed=avse.embed:main",
            "avse-export=avse.export:main",
        ],
    },
)
