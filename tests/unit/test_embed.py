"""avse.embed: windowed embeddings equal one pass, avse-embed (published and our files, default
presets, errors naming the file), a front-end recorded in a model folder, and avse-extract on a
face-centred clip with an embedding model."""
import multiprocessing as mp

import numpy as np
import pytest
import torch
import yaml

from avse import embed
from avse.inference import AVSEExtractor
from avse.models import AVSEModel, save_model
from avse.models.frontends import build_frontend, frontend_info, save_frontend
from avse.models.reference.dlr import to_reference_state_dict
from avse.video.lipread import decode_lipread
from tests.conftest import write_test_mp4
from tests.model_helpers import randomise


@pytest.fixture(scope="module")
def dlr():
    """A dlr front-end with random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    return randomise(build_frontend("dlr"), seed=3, scale=0.05).eval()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(write_test_mp4(tmp_path_factory.mktemp("clip") / "face.mp4", n_frames=30))


def _emb_model(in_dim=512):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                     {"type": "embedding", "in_dim": in_dim, "out_dim": 16, "hidden": None},
                     {"type": "tcn", "bottleneck": 16, "hidden": 16, "num_blocks": 1,
                      "num_repeats": 1}, fusion="concat")


def test_windows_with_context_equal_one_pass_of_the_3d_stem(dlr):
    rois = np.random.default_rng(0).integers(0, 256, (16, 112, 112), dtype=np.uint8)
    whole = embed.embed_clips(dlr, [rois])[0]
    read = lambda a, b: rois[a:b]  # noqa: E731
    windowed = np.concatenate([e for _, e in embed.embed_sequence(dlr, read, 16, window=5,
                                                                  context=2)])
    np.testing.assert_allclose(windowed, whole, rtol=1e-4, atol=1e-5)
    no_context = np.concatenate([e for _, e in embed.embed_sequence(dlr, read, 16, window=5,
                                                                    context=0)])
    assert np.abs(no_context - whole).max() > 1e-3  # the temporal kernel of 5 sees the edges


def test_embed_track_runs_each_contiguous_part_whole(dlr, tmp_path):
    faces = np.random.default_rng(1).integers(0, 256, (12, 224, 224), dtype=np.uint8)
    frames = np.r_[np.arange(3, 10), np.arange(20, 25)]  # a track merged across a cut
    out = embed.embed_track(dlr, faces, None, frames, "lipread", str(tmp_path / "e.npy"),
                            window=4)
    got = np.asarray(out)
    crops = faces[:, 56:168, 56:168]
    want = np.concatenate(embed.embed_clips(dlr, [crops[:7], crops[7:]]))
    assert got.shape == (12, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_avse_embed_published_file_defaults_to_lipread(dlr, clip, tmp_path, capsys):
    published = tmp_path / "visual_frontend.pt"
    torch.save({"module." + k: v for k, v in to_reference_state_dict(dlr.state_dict()).items()},
               published)
    out = tmp_path / "emb.npy"
    assert embed.main(["--frontend", str(published), "--video", clip, "--out", str(out)]) == 0
    assert "preset lipread" in capsys.readouterr().out
    got = np.load(out)
    with torch.no_grad():
        want = dlr(torch.from_numpy(decode_lipread(clip))[None])[0].numpy()
    assert got.dtype == np.float32 and got.shape == (30, 512)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # a 112-pixel front-end cannot read an 88-pixel preset
    assert embed.main(["--frontend", str(published), "--video", clip, "--out", str(out),
                       "--preset", "voxceleb2"]) == 2
    err = capsys.readouterr().err
    assert str(published) in err and "112x112" in err and "'voxceleb2'" in err


def test_avse_embed_our_file_uses_its_preset_and_errors_name_the_file(clip, tmp_path, capsys):
    ours, bare, junk = tmp_path / "cnn.pt", tmp_path / "bare.pt", tmp_path / "junk.pt"
    fe = build_frontend("cnn", hidden=8, channels=(4, 8))
    save_frontend(fe, str(ours), preset="voxceleb2")
    save_frontend(fe, str(bare))  # no preset recorded
    junk.write_bytes(b"not a torch file")
    out = tmp_path / "e.npy"
    assert embed.main(["--frontend", str(ours), "--video", clip, "--out", str(out)]) == 0
    assert np.load(out).shape == (30, 8) and "preset voxceleb2" in capsys.readouterr().out
    for path, message in ((bare, "records no crop preset"), (junk, "not a readable torch file"),
                          (tmp_path / "missing.pt", "not found")):
        assert embed.main(["--frontend", str(path), "--video", clip, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("avse-embed: error: ") and str(path) in err and message in err
    assert embed.main(["--frontend", str(ours), "--video", str(tmp_path / "none.mp4"),
                       "--out", str(out)]) == 2
    assert "none.mp4: no such file" in capsys.readouterr().err


def test_frontend_in_a_model_folder_and_face_centred_extraction(dlr, clip, tmp_path, capsys):
    from avse.models.io import ModelLoadError, inference_config

    fe_file = tmp_path / "dlr.pt"
    save_frontend(dlr, str(fe_file))
    roi_dir = save_model(AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                                   {"type": "cnn", "out_dim": 16},
                                   {"type": "tcn", "bottleneck": 16, "hidden": 16,
                                    "num_blocks": 1, "num_repeats": 1}, fusion="concat"),
                         str(tmp_path / "roi"))
    with pytest.raises(embed.EmbedError, match="reads mouth crops itself"):
        embed.install_frontend(roi_dir, str(fe_file))
    narrow = save_model(_emb_model(in_dim=64), str(tmp_path / "narrow"))
    with pytest.raises(embed.EmbedError, match="512-d features .* 64-d"):
        embed.install_frontend(narrow, str(fe_file))
    folder = save_model(_emb_model(), str(tmp_path / "m"))
    assert embed.main(["--frontend", str(fe_file), "--model", folder]) == 0
    capsys.readouterr()
    section = yaml.safe_load(open(f"{folder}/model.yaml"))["inference"]
    assert section["frontend"] == "frontend.pt" and section["crop"] == "lipread"
    assert frontend_info(f"{folder}/frontend.pt")["preset"] == "lipread"
    ex = AVSEExtractor.from_hparams(folder)
    assert ex.frontend is not None and ex.crop == "lipread"
    wav = ex.extract(video=clip)  # the clip's own audio; its embeddings computed here
    assert wav.shape == (30 * 640,) and torch.isfinite(wav).all()
    npy = tmp_path / "e.npy"
    assert embed.main(["--frontend", str(fe_file), "--video", clip, "--out", str(npy)]) == 0
    assert torch.equal(ex.extract(mixture=clip, video=str(npy)), wav)
    (tmp_path / "m" / "frontend.pt").unlink()
    with pytest.raises(ModelLoadError, match="frontend.pt not found"):
        AVSEExtractor.from_hparams(folder)
    with pytest.raises(ModelLoadError, match="inside the model folder"):
        inference_config({"frontend": "/abs/frontend.pt"})
    no_fe = save_model(_emb_model(), str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="names no front-end"):
        AVSEExtractor.from_hparams(no_fe).extract(video=clip)


def test_a_forked_worker_decodes_after_its_parent_did(clip):
    """The stage's decoding workers are forked from a process that may have decoded already:
    the swscale context it cached must be neither reused nor freed in the worker (both hang)."""
    first = embed.video_region(clip, "lipread")
    pool = mp.get_context("fork").Pool(1)
    try:
        again = pool.apply_async(embed.video_region, (clip, "lipread")).get(timeout=60)
    finally:
        pool.terminate()
    np.testing.assert_array_equal(again, first)


def test_the_stage_batches_clips_and_windows_long_ones_to_the_same_numbers(dlr):
    from avse.recipes.embed import _Batcher

    rng = np.random.default_rng(2)
    clips = [rng.integers(0, 256, (n, 112, 112), dtype=np.uint8) for n in (12, 5, 5, 3)]
    got = {}
    batcher = _Batcher(dlr, "cpu", 10, lambda key, n, path, e: got.setdefault(key, e))
    for i, c in enumerate(clips):  # 12 > 10 frames: windows; the 5s share a batch
        batcher.add(i, len(c), "", c)
    batcher.flush()
    for i, c in enumerate(clips):
        np.testing.assert_allclose(got[i], embed.embed_clips(dlr, [c])[0], rtol=1e-4, atol=1e-5)
