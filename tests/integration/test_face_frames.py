"""``--crop face``: shards of the tracked face-centred frames, the model's crop cut at load time.

Two tiny GRID-like face videos (MPEG-1 360x288, the astronaut's face) are staged twice by the
shared stages, with ``--crop landmarks`` and with ``--crop face``; the list loader cutting
``landmarks`` from the face shards gives the lips the landmarks staging stored, and the
cross-corpus table passes the model's crop.
"""
import json
import os

import numpy as np
import pytest

from avse.data.lists import parse_row
from avse.data.loaders import make_list_loader
from avse.data.shards import ShardError
from avse.recipes import stages
from avse.recipes.common import RecipeError, write_jsonl
from tests.grid_fixture import N_FRAMES, write_mpg, write_wav

ROWS = ["test,test,s1,grid/u1,-2.5,test,s2,grid/u2,0,1.0",
        "test,test,s2,grid/u2,1.5,test,s1,grid/u1,0,1.0",
        "test,test,s3,grid/u3,0,test,s1,grid/u1,0,1.0"]


def _stage(root, media, crop):
    out = str(root / crop)
    os.makedirs(out)
    entries = [{**stages.manifest_entry(f"s{k}/grid/u{k}", f"s{k}", "grid", f"u{k}", "grid",
                                        video, "test"), "audio": wav}
               for k, (video, wav) in enumerate(media, 1)]
    write_jsonl(entries, os.path.join(out, "manifest.jsonl"))
    infos = stages.stage_extract(out, crop=crop)
    assert len(infos) == len(media), open(os.path.join(out, "rejected.tsv")).read()
    stages.stage_shards(out, shard_multiple=1, corpus="grid")  # the crop stage 2 recorded
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("face_frames")
    media = []
    for k in (1, 2, 3):
        video, wav = str(root / f"u{k}.mpg"), str(root / f"u{k}.wav")
        write_mpg(video, seed=k)
        write_wav(wav, 25000, seed=k)
        media.append((video, wav))
    return {crop: _stage(root, media, crop) for crop in ("landmarks", "lipread", "face")}


def _visuals(out, **opts):
    rows = [parse_row(r) for r in ROWS]
    loader = make_list_loader(os.path.join(out, "shards", "test"), rows, stage="test", **opts)
    return [(b.visual.numpy(), b.mixture.numpy()) for b in loader]


def test_face_shards_hold_the_frames_and_landmarks(staged):
    with open(os.path.join(staged["face"], "shards", "test", "meta.json")) as f:
        meta = json.load(f)
    assert meta["crop"] == "face" and meta["visual"] == ["face"] and meta["face_size"] == 224
    assert {"face.npy", "facelm.npy", "flac", "json"} <= set(meta["fields"])
    base = os.path.join(staged["face"], "extract", "test", "s1", "grid", "u1")
    faces, lms = np.load(base + ".face.npy"), np.load(base + ".facelm.npy")
    assert faces.dtype == np.uint8 and faces.shape == (N_FRAMES, 224, 224)
    assert lms.dtype == np.float32 and lms.shape == (N_FRAMES, 5, 2)
    assert 0 < lms.min() and lms.max() < 224  # inside the face frame


def test_landmarks_cut_at_load_time_equal_the_landmarks_staging(staged):
    want = _visuals(staged["landmarks"])
    got = _visuals(staged["face"], mouth_crop="landmarks")
    assert len(got) == len(want) == len(ROWS)
    for (gv, gm), (wv, wm) in zip(got, want):
        assert gv.shape == wv.shape == (1, 25, 88, 88)
        assert np.array_equal(gv, wv)
        assert np.array_equal(gm, wm)
    # another preset from the same staging: the fixed voxceleb2 box of the face frames
    vox = _visuals(staged["face"], mouth_crop="voxceleb2")
    assert vox[0][0].shape == (1, 25, 88, 88) and not np.array_equal(vox[0][0], want[0][0])


@pytest.mark.parametrize("visual_from", ["target", "mismatched"])
def test_presets_and_mismatched_lips_cut_at_load_time_match_their_staging(staged, visual_from):
    """Each tracked preset cut from the face shards matches its own staging, for the target's
    lips and for another speaker's (the mismatched-lips condition): ``landmarks`` exactly;
    ``lipread`` within a few gray levels, since its staging takes OpenCV's gray through RGB
    (the published front-end's) and the face shards the luma plane (meta ``face_gray``)."""
    for preset, size in (("landmarks", 88), ("lipread", 112)):
        want = _visuals(staged[preset], visual_from=visual_from)
        got = _visuals(staged["face"], mouth_crop=preset, visual_from=visual_from)
        assert [v.shape for v, _ in got] == [(1, 25, size, size)] * len(ROWS)
        for (gv, gm), (wv, wm) in zip(got, want):
            assert np.array_equal(gm, wm)
            diff = np.abs(gv.astype(int) - wv.astype(int))
            if preset == "landmarks":
                assert not diff.any()
            else:  # measured: mean 1.4 levels, max 7, 0.2 % of pixels over 2
                assert diff.mean() < 2.5 and diff.max() <= 16 and np.mean(diff > 2) < 0.02
    if visual_from == "mismatched":  # row 0 (s1 + s2) gets the lips of s3, row 2's target
        target = _visuals(staged["face"], mouth_crop="lipread")
        assert np.array_equal(got[0][0], target[2][0])
        assert not np.array_equal(got[0][0], target[0][0])


def test_conditions_and_test_sets_cut_the_model_crop(staged, tmp_path):
    """avse-conditions and the experiment's test_sets on face shards: the model's crop (the
    entry's mouth_crop, else the training crop) is cut, scores equal the landmarks staging."""
    from avse.data.lists import write_list
    from avse.evaluation.conditions import evaluate_conditions
    from avse.experiment import run_tests, training_inference_config
    from avse.models import load_model
    from tests.model_helpers import tiny_model_folder

    model = load_model(tiny_model_folder(str(tmp_path / "model")))
    path = str(tmp_path / "rows.csv")
    write_list([parse_row(r) for r in ROWS], path)
    res = {crop: evaluate_conditions(model, os.path.join(staged[crop], "shards", "test"),
                                     {"clean": path}, metrics=["si_sdr"],
                                     mouth_crop="landmarks")["clean"]
           for crop in ("landmarks", "face")}
    assert res["face"]["si_sdr"]["mean"] == res["landmarks"]["si_sdr"]["mean"]

    class Brain:  # what run_tests asks of AVSEBrain: evaluate a loader
        seen = {}

        def evaluate_to(self, loader, out_dir, name):
            self.seen[name] = [b.visual.shape[-1] for b in loader]
            return {"n": len(self.seen[name])}

    face = os.path.join(staged["face"], "shards", "test")
    hparams = {"output_folder": str(tmp_path / "exp"), "train_shards": face,
               "mouth_crop": "lipread", "mixture_config": None,
               "test_sets": {"own": {"shards": face, "list": path},
                             "lm": {"shards": face, "list": path, "mouth_crop": "landmarks"}}}
    assert training_inference_config(hparams)["crop"] == "lipread"  # recorded in model.yaml
    run_tests(Brain(), hparams)
    assert Brain.seen == {"own": [112] * len(ROWS), "lm": [88] * len(ROWS)}


def test_meta_names_the_crop_stage_2_used(staged):
    for crop, out in staged.items():
        with open(os.path.join(out, "shards", "test", "meta.json")) as f:
            assert json.load(f)["crop"] == crop
    lips = [{"key": "a", "visual": "lips"}, {"key": "b", "visual": "lips"}]
    assert stages.extracted_crop("OUT", lips, "lrs3") == "lrs3"  # older extracts: the given
    assert stages.extracted_crop("OUT", [{**i, "crop": "lipread"} for i in lips],
                                 "voxceleb2") == "lipread"
    for infos, crop in (([{**lips[0], "crop": "lipread"}, {**lips[1], "crop": "landmarks"}], None),
                        ([lips[0], {"key": "b", "visual": "face"}], "face"),
                        (lips, "face")):
        with pytest.raises(RecipeError, match="OUT/extract holds .*re-run stage 2"):
            stages.extracted_crop("OUT", infos, crop)


def test_face_shards_need_the_model_crop(staged):
    with pytest.raises(ShardError, match="mouth_crop"):
        _visuals(staged["face"])
    with pytest.raises(ShardError, match="mouth_crop"):
        _visuals(staged["face"], mouth_crop="nope")
    assert _visuals(staged["landmarks"], mouth_crop="lipread")[0][0].shape[-1] == 88  # ignored


def test_cross_corpus_cuts_the_model_crop(staged, tmp_path):
    from avse.data.lists import write_list
    from avse.evaluation.cross_corpus import Corpus, evaluate_corpora
    from avse.models import load_model
    from tests.model_helpers import tiny_model_folder

    model = load_model(tiny_model_folder(str(tmp_path / "model")))
    metrics = ["si_sdr", "si_sdri"]
    res = {}
    for crop, out in staged.items():
        if crop == "lipread":
            continue
        path = os.path.join(out, "lists", "voxmix_2mix.csv")
        write_list([parse_row(r) for r in ROWS], path)
        res[crop] = evaluate_corpora(model, [Corpus("grid", out, path)], metrics,
                                     model_crop="landmarks")["corpora"]["grid"]
    assert res["face"]["crop"] == "face:landmarks" and res["landmarks"]["crop"] == "landmarks"
    for m in metrics:
        assert res["face"]["summary"][m]["mean"] == res["landmarks"]["summary"][m]["mean"]
