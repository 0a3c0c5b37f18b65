"""Face shards (``--crop face``) in the training loaders: dynamic mixing and lip reading cut
the model's crop preset (``mouth_crop``) from the face frames with their landmarks.

Tiny face shards are written directly (the shard writer) from the astronaut's face, moved a
pixel or two per frame, with landmarks jittered around the reference face; the crops the
loaders hand out must be ``crop_faces`` of the stored frames over the same frame range.
"""
import numpy as np
import pytest

from avse.data.loaders import make_text_loader, make_train_loader
from avse.data.loaders.bad_samples import BadSample
from avse.data.mixing import MixtureConfig
from avse.data.shards import ShardError, encode_sample, write_split
from avse.video.crops import REFERENCE_FACE, crop_faces

N, SIZE = 30, 224  # frames per utterance (1.2 s), face frame side
CROP = 10  # frames per training crop (0.4 s)


def _face_utterance(k: int) -> dict:
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(k)
    face = np.asarray(Image.fromarray(data.astronaut()).convert("L")
                      .crop((130, 10, 350, 230)).resize((SIZE, SIZE)))
    shifts = np.cumsum(rng.integers(-2, 3, N))
    faces = np.stack([np.roll(face, int(d), axis=1) for d in shifts])
    faces = np.clip(faces + rng.integers(0, 6, faces.shape), 0, 255).astype(np.uint8)
    lms = (2 * REFERENCE_FACE[None] + rng.normal(0, 1.5, (N, 5, 2))).astype(np.float32)
    t = np.arange(N * 640) / 16000
    wav = 0.3 * np.sin(2 * np.pi * (120 + 40 * k) * t) + 0.05 * rng.standard_normal(len(t))
    spk = f"s{k % 2 + 1}"
    return {"__key__": f"{spk}/grid/u{k}", "flac": wav.astype(np.float32), "face.npy": faces,
            "facelm.npy": lms, "json": {"spk": spk, "duration": N / 25, "text": "BIN BLUE",
                                        "tokens": [3, 4, 5]}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("face_shard_loaders")
    utts = [_face_utterance(k) for k in range(4)]
    face_meta = {"crop": "face", "visual": ["face"], "face_size": SIZE}
    dirs = {"face": str(root / "face"), "bad": str(root / "bad"), "lips": str(root / "lips")}
    write_split(utts, dirs["face"], shard_size=2, extra_meta=face_meta)
    no_lm = {k: v for k, v in _face_utterance(9).items() if k != "facelm.npy"}
    write_split([no_lm] + utts, dirs["bad"], shard_size=8, extra_meta=face_meta)
    lips = [{"__key__": u["__key__"], "flac": u["flac"], "json": u["json"],
             "lips.npy": u["face.npy"][:, 68:156, 68:156]} for u in utts]
    write_split(lips, dirs["lips"], shard_size=2)
    return {"dirs": dirs, "utts": {u["__key__"]: u for u in utts}}


def _cut(utt, preset):
    return crop_faces(utt["face.npy"], preset, utt["facelm.npy"])


def _offset(crops, frames):
    """Where ``frames`` start in ``crops`` (a whole utterance's), or None."""
    for o in range(len(crops) - len(frames) + 1):
        if np.array_equal(crops[o:o + len(frames)], frames):
            return o
    return None


@pytest.mark.parametrize("preset,side", [("landmarks", 88), ("lipread", 112)])
def test_dynamic_mixing_cuts_the_preset_from_the_face_frames(shards, preset, side):
    loader = make_train_loader(shards["dirs"]["face"], MixtureConfig(crop_seconds=CROP / 25),
                               batch_size=2, shuffle_buffer=2, epoch_steps=2, mouth_crop=preset)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert tuple(batch.visual.shape) == (2, CROP, side, side)
        for key, visual in zip(batch.keys, batch.visual.numpy()):
            assert _offset(_cut(shards["utts"][key], preset), visual) is not None, key
    assert loader.faults["skipped"] == 0


def test_whole_utterances_and_lips_at_rest_come_from_the_cut(shards):
    loader = make_train_loader(shards["dirs"]["face"], MixtureConfig(crop_seconds=None),
                               batch_size=1, shuffle_buffer=2, epoch_steps=2,
                               mouth_crop="landmarks")
    for batch in loader:
        want = _cut(shards["utts"][batch.keys[0]], "landmarks")
        assert np.array_equal(batch.visual[0].numpy(), want)
    silent = MixtureConfig(crop_seconds=CROP / 25, conditions={"absent": 1.0})
    batch = next(iter(make_train_loader(shards["dirs"]["face"], silent, batch_size=2,
                                        shuffle_buffer=2, epoch_steps=1, mouth_crop="landmarks")))
    assert tuple(batch.visual.shape) == (2, CROP, 88, 88) and float(batch.activity.sum()) == 0
    for key, visual in zip(batch.keys, batch.visual.numpy()):  # rest frames: frames of the cut
        crops = _cut(shards["utts"][key], "landmarks")
        assert all(any(np.array_equal(f, c) for c in crops) for f in visual), key


def test_face_shards_need_mouth_crop(shards):
    cfg = MixtureConfig(crop_seconds=CROP / 25)
    for bad in (None, "nope"):
        with pytest.raises(ShardError, match=r"face.*pass mouth_crop.*landmarks"):
            make_train_loader(shards["dirs"]["face"], cfg, batch_size=2, mouth_crop=bad)
        with pytest.raises(ShardError, match=r"face.*pass mouth_crop.*landmarks"):
            make_text_loader(shards["dirs"]["face"], batch_size=2, stage="test", mouth_crop=bad)
    # shards of mouth crops: mouth_crop is ignored
    batch = next(iter(make_train_loader(shards["dirs"]["lips"], cfg, batch_size=2,
                                        shuffle_buffer=2, mouth_crop="lipread")))
    assert tuple(batch.visual.shape) == (2, CROP, 88, 88)
    clips = next(iter(make_text_loader(shards["dirs"]["lips"], batch_size=2, stage="test",
                                       mouth_crop="lipread")))
    assert tuple(clips.lips.shape) == (2, N, 88, 88)
    with pytest.raises(ShardError, match="one --crop"):
        make_text_loader([shards["dirs"]["face"], shards["dirs"]["lips"]], batch_size=2,
                         stage="test", mouth_crop="landmarks")


def test_a_face_sample_without_landmarks_is_skipped(shards):
    loader = make_train_loader(shards["dirs"]["bad"], MixtureConfig(crop_seconds=CROP / 25),
                               batch_size=2, shuffle_buffer=2, epoch_steps=1,
                               mouth_crop="landmarks")
    assert tuple(next(iter(loader)).visual.shape) == (2, CROP, 88, 88)
    assert loader.faults["reasons"] == {"missing_field": 1}
    assert loader.faults["bad_samples"][0].endswith(":s2/grid/u9")
    raw = {k: v for k, v in encode_sample(_face_utterance(9)).items() if k != "facelm.npy"}
    with pytest.raises(BadSample, match="no facelm.npy member"):
        loader.dataset.decode(raw, np.random.default_rng(0))
    text = make_text_loader(shards["dirs"]["bad"], batch_size=8, stage="test",
                            mouth_crop="landmarks")
    batches = list(text)
    assert [len(b) for b in batches] == [4] and text.skipped == {"no_lips": 1}


@pytest.mark.parametrize("preset,side", [("landmarks", 88), ("lipread", 112)])
def test_lip_reading_clips_are_cut_from_the_face_frames(shards, preset, side):
    for stage in ("test", "train"):
        loader = make_text_loader(shards["dirs"]["face"], batch_size=2, stage=stage,
                                  epoch_steps=2 if stage == "train" else None, mouth_crop=preset)
        keys = []
        for batch in loader:
            assert tuple(batch.lips.shape) == (2, N, side, side)
            assert batch.tokens.tolist() == [[3, 4, 5]] * 2 and batch.texts == ["BIN BLUE"] * 2
            for key, lips in zip(batch.keys, batch.lips.numpy()):
                assert np.array_equal(lips, _cut(shards["utts"][key], preset)), key
            keys += batch.keys
        if stage == "test":  # one pass, in order; training draws from endless passes
            assert sorted(keys) == sorted(shards["utts"])
        assert len(keys) == 4 and set(keys) <= set(shards["utts"])


def test_the_yaml_mouth_crop_reaches_the_training_and_lip_reading_loaders(shards):
    """``mouth_crop`` in the yaml: the AVSE and lip-reading experiments' loaders cut it, and
    model.yaml / lipreading.json record it as the model's crop (not ``face``)."""
    from avse import experiment, lipreading

    face = shards["dirs"]["face"]
    hp = {"train_shards": face, "mixture_config": MixtureConfig(crop_seconds=CROP / 25),
          "batch_size": 2, "epoch_steps": 1, "shuffle_buffer": 2, "mouth_crop": "landmarks"}
    train, _ = experiment.make_loaders(hp)
    assert tuple(next(iter(train)).visual.shape) == (2, CROP, 88, 88)
    assert experiment.training_inference_config(hp)["crop"] == "landmarks"
    hp = {"train_shards": face, "valid_shards": face, "batch_size": 2, "epoch_steps": 1,
          "valid_batch_size": 2, "mouth_crop": "lipread", "modules": {"model": None}}
    train, valid = lipreading.make_loaders(hp)
    for loader in (train, valid):
        assert tuple(next(iter(loader)).lips.shape) == (2, N, 112, 112)
    assert lipreading.model_info(hp)["crop"] == "lipread"
    with pytest.raises(ShardError, match="mouth_crop"):
        experiment.make_loaders({**hp, "mouth_crop": None, "mixture_config": None})
