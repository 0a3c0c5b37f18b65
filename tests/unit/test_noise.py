"""MUSAN noise: per-category SNRs, babble, list-format noise tuples, list and dynamic loaders."""
import pickle

import numpy as np
import pytest

from avse.data import lists
from avse.data import noise as musan
from avse.data import loaders
from avse.data.shards import ShardIndex
from avse.data.align import SAMPLES_PER_FRAME as SPF
from avse.data.mixing import MixtureConfig, mix_sources, scale_to_snr, snr_db
from avse.data.shards import write_split

N_SPEECH = 8


def _noise_pieces():
    rng = np.random.default_rng(0)
    out = []
    for c, n in (("noise", 3), ("music", 3), ("speech", N_SPEECH)):
        for i in range(n):
            t = np.arange(int(16000 * rng.uniform(0.4, 1.2))) / 16000
            if c == "noise":
                wav = rng.uniform(0.01, 0.5) * rng.standard_normal(len(t))
            elif c == "music":
                wav = 0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t) * (1 + np.sin(2 * np.pi * 2 * t))
            else:
                wav = rng.uniform(0.05, 0.4) * rng.standard_normal(len(t)) * (np.sin(
                    2 * np.pi * 4 * t + i) > 0)
            out.append({"__key__": f"{c}/sub{i % 2}/{c}-sub-{i:04d}-000", "flac": wav,
                        "json": {"category": c, "duration": len(t) / 16000}})
    return out


def _speech_utterances(n_spk=3, n_utt=2, frames=30):
    rng = np.random.default_rng(1)
    out = []
    for u in range(n_utt):
        for s in range(n_spk):
            key = f"id{s:05d}/video{u:06d}/00001"
            out.append({"__key__": key, "flac": 0.2 * rng.standard_normal(frames * SPF),
                        "lips.npy": np.full((frames, 88, 88), s, np.uint8),
                        "json": {"spk": f"id{s:05d}", "duration": frames / 25}})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    write_split(_noise_pieces(), str(root / "noise"), shard_size=5)
    write_split(_speech_utterances(), str(root / "speech"), shard_size=3)
    return root


def _target(seed, n=16000):
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(n) * (1 + np.sin(np.arange(n) / 900))).astype(np.float32)


@pytest.mark.parametrize("category", ["noise", "music", "babble"])
def test_noise_snr_on_the_mixed_span_is_the_drawn_one(data, category):
    source = musan.MusanNoise(str(data / "noise"), category_probs={category: 1.0})
    cfg = MixtureConfig(crop_seconds=1.0, noise_prob=1.0, noise_source=source)
    low, high = musan.DEFAULT_SNR_RANGES[category]
    n_pieces = set()
    for seed in range(12):
        _, keys, _ = source.draw(np.random.default_rng(seed))  # what sample_noise draws first
        assert all(musan.noise_category(k) == ("speech" if category == "babble" else category)
                   for k in keys)
        assert len(set(keys)) == len(keys)
        n_pieces.add(len(keys))
        target = _target(seed)
        wav, snr = cfg.sample_noise(len(target), np.random.default_rng([seed, 1]))
        assert wav.shape == target.shape and low <= snr <= high
        mixture, tgt, interference = mix_sources(target, [], [], wav, snr)
        np.testing.assert_allclose(mixture, tgt + interference, atol=1e-6)
        assert abs(snr_db(tgt, interference) - snr) < 0.1
    if category == "babble":
        assert min(n_pieces) >= 3 and max(n_pieces) <= 7 and len(n_pieces) > 1
    else:
        assert n_pieces == {1}


def test_musan_noise_is_reproducible_pickles_and_caches(data):
    source = musan.MusanNoise(str(data / "noise"), snr_ranges={"noise": [1, 2]})
    assert source.snr_ranges["noise"] == (1.0, 2.0) and source.snr_ranges["music"] == (5.0, 15.0)
    assert {c: len(v) for c, v in source.pool.items()} == {"music": 3, "noise": 3, "speech": 8}
    a = [source(np.random.default_rng(s)) for s in range(6)]
    clone = pickle.loads(pickle.dumps(source))
    cached = musan.MusanNoise(str(data / "noise"), snr_ranges={"noise": [1, 2]}, cache=True)
    for other in (clone, cached, source):
        for s, (wav, snr) in enumerate(a):
            w, r = other(np.random.default_rng(s))
            assert r == snr and np.array_equal(w, wav) and w.dtype == np.float32
    assert cached.cache and pickle.loads(pickle.dumps(cached)).cache.keys() == cached.cache.keys()
    assert "babble" in repr(source)


def test_musan_noise_options_are_checked(data):
    d = str(data / "noise")
    with pytest.raises(ValueError, match="unknown categor"):
        musan.MusanNoise(d, category_probs={"rain": 1.0})
    with pytest.raises(ValueError, match="needs at least 9"):
        musan.MusanNoise(d, babble_pieces=(9, 9))
    with pytest.raises(ValueError, match="low <= high"):
        musan.MusanNoise(d, snr_ranges={"music": (10, 5)})
    with pytest.raises(ValueError, match="positive sum"):
        musan.MusanNoise(d, category_probs={"noise": 0.0})


def test_sample_noise_takes_wav_or_wav_and_snr():
    rng = np.random.default_rng(2)
    old = MixtureConfig(noise_prob=1.0, noise_snr_range=(3, 4), noise_source=lambda r: np.ones(7))
    wav, snr = old.sample_noise(10, rng)
    assert wav.shape == (10,) and 3 <= snr <= 4
    own = MixtureConfig(noise_prob=1.0, noise_source=lambda r: (np.ones(7), 17.5))
    assert own.sample_noise(10, rng)[1] == 17.5
    assert MixtureConfig(noise_prob=0.0, noise_source=lambda r: (np.ones(7), 1.0)).sample_noise(
        10, rng, force=True)[1] == 1.0
    with pytest.raises(ValueError, match="0 interferers"):
        MixtureConfig(num_interferers_probs={0: 0.2, 1: 0.8})
    cfg = MixtureConfig(num_interferers_probs={0: 0.2, 1: 0.8}, noise_source=lambda r: np.ones(7))
    assert cfg.max_interferers == 1
    assert {cfg.sample_num_interferers(rng) for _ in range(60)} == {0, 1}


ROW_2MIX = "test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,3.12"
NOISY = [
    "test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,"
    "musan,noise,noise/free-sound/noise-free-sound-0003-000,7.5,3.12",
    "test,test,id00017,01dfn2spqyE/00001,0,musan,music,music/fma/music-fma-0001-002,12,3.12",
    "val,val,id1,v/c,0,val,id2,v/d,2,val,id3,v/e,-3,"
    "musan,babble,speech/a/s-0000-000+speech/b/s-0001-003+speech/a/s-0002-000,15.25,4",
]


def test_list_rows_with_noise_round_trip(tmp_path):
    path = tmp_path / "noisy.csv"
    path.write_text("\n".join([ROW_2MIX] + NOISY) + "\n")
    rows = lists.read_list(str(path))
    assert rows[0].noise == () and rows[0] == lists.parse_row(ROW_2MIX)
    assert [len(m.interferers) for m in rows] == [1, 1, 0, 2]
    assert [len(m.noise) for m in rows] == [0, 1, 1, 1]
    key = "noise/free-sound/noise-free-sound-0003-000"
    assert rows[1].noise[0] == lists.Noise("noise", (key,), 7.5)
    assert rows[2].num_speakers == 1 and rows[2].noise[0].category == "music"
    babble = rows[3].noise[0]
    assert babble.category == "babble" and len(babble.keys) == 3 and babble.snr == 15.25
    assert babble.set == "musan" and babble.key == "+".join(babble.keys)
    assert {s.key for s in rows[3].sources} == {"id1/v/c", "id2/v/d", "id3/v/e"}
    out = tmp_path / "out.csv"
    lists.write_list(rows, str(out))
    assert out.read_text().splitlines() == [ROW_2MIX] + NOISY
    assert lists.read_list(str(out)) == rows


@pytest.mark.parametrize("bad,needle", [
    ("test,test,id1,v/c,0,musan,noise,n/a/x-000,5,test,id2,v/d,1,3", "after a noise tuple"),
    ("test,test,id1,v/c,0,musan,noise,n/a/x-000+,5,3", "noise tuple"),
    ("test,test,id1,v/c,0,musan,,n/a/x-000,5,3", "noise tuple"),
    ("test,test,id1,v/c,0,musan,noise,n/a/x-000,loud,3", "SNR"),
    ("test,test,id1,v/c,0,3", "fields"),
])
def test_malformed_noise_tuples_are_named(bad, needle):
    with pytest.raises(lists.ListError, match=needle):
        lists.parse_row(bad, where="l.csv:1")


def test_add_noise_makes_the_named_conditions():
    two = [lists.parse_row(ROW_2MIX)] * 3
    three = [lists.parse_row("test,test,id1,v/c,0,test,id2,v/d,2,test,id3,v/e,-3,4")] * 2
    pool = [f"{c}/x/{c}-{i}-000" for c in ("noise", "music", "speech") for i in range(8)]
    enh = lists.add_noise(two, pool, seed=1, num_interferers=0)
    assert enh == lists.add_noise(two, pool, seed=1, num_interferers=0)
    assert enh != lists.add_noise(two, pool, seed=2, num_interferers=0)
    for m in enh:
        assert m.interferers == () and len(m.noise) == 1 and m.length == 3.12
        assert lists.parse_row(lists.format_row(m)) == m
    mix_noise = lists.add_noise(two, pool, seed=1, num_interferers=1)
    assert all(len(m.interferers) == 1 and m.noise for m in mix_noise)
    assert lists.add_noise(two, pool, num_interferers=2) == []  # 2-mix rows cannot be 'hard'
    hard = lists.add_noise(two + three, pool, seed=3, num_interferers=2)
    assert len(hard) == 2 and all(len(m.interferers) == 2 for m in hard)
    many = lists.add_noise(two * 20, pool, seed=4)
    cats = {m.noise[0].category for m in many}
    assert cats == {"noise", "music", "babble"}
    for m in many:
        nz = m.noise[0]
        low, high = musan.DEFAULT_SNR_RANGES[nz.category]
        assert low <= nz.snr <= high
        assert (3 <= len(nz.keys) <= 7) if nz.category == "babble" else len(nz.keys) == 1
    by_set = lists.add_noise(two, {"test": {"noise": ["noise/t/n-000"]}}, seed=0)
    assert {m.noise[0].keys for m in by_set} == {("noise/t/n-000",)}
    with pytest.raises(lists.ListError, match="no noise pool for rows of set 'test'"):
        lists.add_noise(two, {"val": {"noise": ["noise/t/n-000"]}})
    pool_utts = [{"key": f"id{s}/v{s}/c{u}", "spk": f"id{s}", "set": "test", "duration": 3.0 + u}
                 for s in range(3) for u in range(2)]
    gen = lists.generate_noisy_mixtures(pool_utts, 5, pool, num_speakers=1, seed=0)
    assert len(gen) == 5 and all(m.num_speakers == 1 and m.noise for m in gen)


def _check_batch_identity(batch):
    assert (batch.mixture - batch.target - batch.interference).abs().max() < 1e-5


def test_list_loader_adds_row_noise_at_the_row_snr(data):
    noise_dir, speech_dir = str(data / "noise"), str(data / "speech")
    pool = musan.noise_pool(noise_dir)
    speech = [lists.Source("test", f"id{s:05d}", "video000000/00001") for s in range(3)]
    other = lists.Source("test", "id00002", "video000001/00001", -2.0)

    def row(sources, length, category, keys, snr):
        return lists.Mixture("test", tuple(sources), length, (lists.Noise(category, keys, snr),))

    rows = [row([speech[0]], 1.2, "noise", (pool["noise"][0],), 4.0),
            row([speech[1], other], 1.2, "music", (pool["music"][1],), 9.0),
            row([speech[2]], 1.0, "babble", tuple(pool["speech"][:4]), 15.0)]
    loader = loaders.make_list_loader(speech_dir, rows, stage="test", noise_dirs=noise_dir)
    batches = list(loader)
    again = list(loaders.make_list_loader(speech_dir, rows, stage="test", noise_dirs=[noise_dir]))
    index = ShardIndex(speech_dir)
    for mix, batch, b2 in zip(rows, batches, again):
        _check_batch_identity(batch)
        assert np.array_equal(batch.mixture.numpy(), b2.mixture.numpy())  # fixed: start at 0
        t = batch.target[0].double().numpy()
        inter = batch.interference[0].double().numpy()
        assert batch.snr.shape == (1, 1)
        assert batch.mixture.shape == (1, round(mix.length * 25) * SPF)
        if mix.interferers:
            other = index.load(mix.interferers[0].key)[0][:len(t)]
            inter = inter - scale_to_snr(t, np.pad(other, (0, len(t) - len(other))),
                                         mix.interferers[0].snr)
            assert batch.interferer_keys == [(mix.interferers[0].key,)]
        else:
            assert batch.interferer_keys == [()] and np.isnan(float(batch.snr[0, 0]))
        assert abs(snr_db(t, inter) - mix.noise[0].snr) < 0.1
    with pytest.raises(lists.ListError, match="noise_dirs") as err:
        loaders.make_list_loader(speech_dir, rows, stage="test")
    assert "row 0" in str(err.value) and "musan,noise," in str(err.value)
    ghost = [lists.Mixture("test", (speech[0],), 1.0, (lists.Noise("noise", ("noise/x/gone",),
                                                                      1.0),))]
    with pytest.raises(lists.ListError, match="noise/x/gone"):
        loaders.make_list_loader(speech_dir, rows + ghost, stage="test", noise_dirs=noise_dir)
    train = loaders.make_list_loader(speech_dir, rows, stage="train", set_name="test",
                                      noise_dirs=noise_dir, config=MixtureConfig(crop_seconds=0.8))
    for batch in train:
        _check_batch_identity(batch)
        assert batch.mixture.shape[1] == 20 * SPF


def test_dynamic_loader_mixes_zero_interferers_with_noise(data):
    source = musan.MusanNoise(str(data / "noise"))
    cfg = MixtureConfig(crop_seconds=0.6, num_interferers_probs={0: 0.5, 1: 0.5},
                        noise_source=source)  # noise_prob 0: only the 0-interferer examples
    loader = loaders.make_train_loader(str(data / "speech"), cfg, batch_size=4, epoch_steps=3,
                                        shuffle_buffer=4, seed=1)
    counts = set()
    for batch in loader:
        _check_batch_identity(batch)
        assert batch.snr.shape[0] == 4
        for i, keys in enumerate(batch.interferer_keys):
            counts.add(len(keys))
            assert np.isnan(float(batch.snr[i, 0])) == (len(keys) == 0)
            t, inter = batch.target[i].double().numpy(), batch.interference[i].double().numpy()
            assert np.mean(inter ** 2) > 0  # never a clean example
            if not keys:
                low, high = 0.0, 20.0  # the widest category range
                assert low - 0.1 <= snr_db(t, inter) <= high + 0.1
    assert counts == {0, 1}
    clone = pickle.loads(pickle.dumps(loader.dataset))
    assert clone.config.noise_source.pool == source.pool
