"""VoxMix list format: parse, write, round trip, errors, generation; target activity tuples,
the absent / sparse condition lists and the list loader's silent targets."""
import os

import numpy as np
import pytest

from avse.data import lists

ROWS = [
    "train,train,id00012,21Uxsk56VDQ/00001,0,train,id00419,Xa-_9bC1dEf/00012,-2.5,4.52",
    "val,val,id00012,21Uxsk56VDQ/00002,0,val,id00300,zzzzzzzzzzz/00003,7.1234,6",
    "test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,"
    "test,id01001,AAAAAAAAAAA/00002,3.5,3.12",
]


def test_round_trip_is_lossless(tmp_path):
    src = tmp_path / "data_list.csv"
    src.write_text("\n".join(ROWS) + "\n")
    mixtures = lists.read_list(str(src))
    assert [m.num_speakers for m in mixtures] == [2, 2, 3]
    assert mixtures[0].target.key == "id00012/21Uxsk56VDQ/00001"
    assert mixtures[0].interferers[0].snr == -2.5
    assert mixtures[2].interferers[1].key == "id01001/AAAAAAAAAAA/00002"
    assert mixtures[2].length == 3.12
    out = tmp_path / "out.csv"
    lists.write_list(mixtures, str(out))
    assert out.read_text().splitlines() == ROWS
    assert lists.read_list(str(out)) == mixtures


@pytest.mark.parametrize("bad,needle", [
    ("train,train,id1,v/c,0,train,id2,v/c,1", "fields"),
    ("train,train,id1,v/c,0,train,id2,vc,1,4.0", "<video>/<clip>"),
    ("train,train,id1,v/c,0,train,id2,v/c,loud,4.0", "SNR"),
    ("train,train,id1,v/c,0,train,id2,v/c,1,long", "length"),
])
def test_malformed_rows_name_file_and_line(tmp_path, bad, needle):
    path = tmp_path / "l.csv"
    path.write_text(ROWS[0] + "\n" + bad + "\n")
    with pytest.raises(lists.ListError) as err:
        lists.read_list(str(path))
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_unknown_utterances_are_named():
    mixtures = [lists.parse_row(r) for r in ROWS]
    known = {s.key for m in mixtures for s in m.sources} - {"id00300/zzzzzzzzzzz/00003"}
    with pytest.raises(lists.ListError, match="id00300/zzzzzzzzzzz/00003"):
        lists.check_known(mixtures, known)


def test_generate_is_seeded_and_uses_other_speakers():
    pool = [{"key": f"id{s:05d}/vid{s:08d}/{c:05d}", "spk": f"id{s:05d}", "set": "train",
             "duration": 3.0 + c} for s in range(6) for c in range(3)]
    a = lists.generate_mixtures(pool, 50, 3, (-5, 5), seed=7)
    b = lists.generate_mixtures(pool, 50, 3, (-5, 5), seed=7)
    c = lists.generate_mixtures(pool, 50, 3, (-5, 5), seed=8)
    assert a == b and a != c
    durations = {u["key"]: u["duration"] for u in pool}
    for mix in a:
        assert len({s.spk for s in mix.sources}) == 3
        assert mix.target.snr == 0 and all(-5 <= s.snr <= 5 for s in mix.interferers)
        assert mix.length == min(durations[s.key] for s in mix.sources)
        assert lists.parse_row(lists.format_row(mix)) == mix
    with pytest.raises(lists.ListError, match="speaker"):
        lists.generate_mixtures(pool[:3], 5, 2)


# ----------------------------------------------------------------------------- target activity
ACTIVE_ROWS = [
    "test,test,id1,v/c,0,test,id2,v/d,-2.5,activity,absent,0-0,0,3.12",
    "test,test,id1,v/c,0,test,id2,v/d,-2.5,musan,noise,noise/a/n-000,5,"
    "activity,sparse,10-40,0,3.12",
]


def test_activity_tuples_round_trip(tmp_path):
    absent, sparse = (lists.parse_row(r) for r in ACTIVE_ROWS)
    assert absent.activity == ("absent", 0, 0) and sparse.activity == ("sparse", 10, 40)
    assert absent.interferers[0].key == "id2/v/d" and len(absent.sources) == 2
    assert sparse.noise[0].keys == ("noise/a/n-000",) and sparse.length == 3.12
    assert lists.parse_row(ROWS[0]).activity is None
    path = tmp_path / "l.csv"
    lists.write_list([absent, sparse, lists.parse_row(ROWS[0])], str(path))
    assert path.read_text().splitlines() == ACTIVE_ROWS + ROWS[:1]
    assert lists.read_list(str(path)) == [absent, sparse, lists.parse_row(ROWS[0])]


@pytest.mark.parametrize("tail", [
    "activity,quiet,0-0,0",          # unknown kind
    "activity,absent,3-9,0",         # absent is 0-0
    "activity,sparse,40-10,0",       # empty span
    "activity,sparse,10-10,0",
    "activity,sparse,10:40,0",       # not start-stop
    "activity,sparse,a-40,0",
    "activity,sparse,10-40,7",       # the last field is 0
    "activity,sparse,10-99,0",       # after the row's 78 frames
])
def test_malformed_activity_tuples_name_file_line_and_form(tmp_path, tail):
    path = tmp_path / "l.csv"
    path.write_text(ROWS[0] + "\n" + f"test,test,id1,v/c,0,test,id2,v/d,1,{tail},3.12\n")
    with pytest.raises(lists.ListError) as err:
        lists.read_list(str(path))
    msg = str(err.value)
    assert f"{path}:2" in msg and "activity" in msg
    assert "activity,<absent|sparse>,<start>-<stop>,0" in msg or "78 frames" in msg


def test_activity_tuple_goes_last():
    with pytest.raises(lists.ListError, match="follows the activity tuple"):
        lists.parse_row("test,test,id1,v/c,0,activity,absent,0-0,0,test,id2,v/d,1,3.12")
    with pytest.raises(lists.ListError, match="follows the activity tuple"):
        lists.parse_row("test,test,id1,v/c,0,test,id2,v/d,1,activity,absent,0-0,0,"
                        "musan,noise,noise/a/n-000,5,3.12")


def test_add_activity_fractions_and_seed():
    rows = [lists.parse_row(f"test,test,id1,v/c,0,test,id2,v/d,1,{2 + k * 0.37:.2f}")
            for k in range(40)]
    a = lists.add_activity(rows, "sparse", seed=5, fraction=(0.3, 0.6))
    assert a == lists.add_activity(rows, "sparse", seed=5, fraction=(0.3, 0.6))
    assert a != lists.add_activity(rows, "sparse", seed=6, fraction=(0.3, 0.6))
    starts = []
    for mix, row in zip(a, rows):
        kind, start, stop = mix.activity
        n = lists.row_frames(row.length)
        assert kind == "sparse" and 0 <= start < stop <= n
        assert 0.3 - 0.5 / n <= (stop - start) / n <= 0.6 + 0.5 / n
        assert mix.sources == row.sources and mix.length == row.length
        assert lists.parse_row(lists.format_row(mix)) == mix
        starts.append(start)
    assert len(set(starts)) > 10
    assert {m.activity for m in lists.add_activity(rows, "absent")} == {("absent", 0, 0)}
    with pytest.raises(ValueError, match="fraction"):
        lists.add_activity(rows, "sparse", fraction=(0.5, 0.2))
    with pytest.raises(ValueError, match="kind"):
        lists.add_activity(rows, "present")


def _speech_shards(path, n_speakers=4, n_clips=2, frames=(60, 90)):
    from avse.data.shards import write_split

    rng = np.random.default_rng(0)
    utts = []
    for s in range(n_speakers):
        for c in range(n_clips):
            n = int(rng.integers(*frames))
            wav = np.zeros(640 * n, np.float32)  # silence, speech in the middle, silence
            wav[640 * 10:640 * (n - 10)] = 0.1 * rng.standard_normal(640 * (n - 20))
            lips = np.full((n, 88, 88), 10 * s + c, np.uint8)
            lips[10:n - 10] += np.arange(n - 20, dtype=np.uint8)[:, None, None] % 7 + 100
            utts.append({"__key__": f"id{s}/vid{c}/00001", "flac": wav, "lips.npy": lips,
                         "json": {"spk": f"id{s}", "duration": n / 25}})
    write_split(utts, str(path), shard_size=3)
    return str(path)


def test_condition_lists_absent_and_sparse(tmp_path):
    speech = _speech_shards(tmp_path / "test")
    paths = lists.make_condition_lists(speech, str(tmp_path / "lists"), 30,
                                       conditions=("2mix", "3mix", "absent", "sparse"), seed=4,
                                       sparse_fraction=(0.25, 0.5))
    rows = {c: lists.read_list(p) for c, p in paths.items()}
    assert os.path.basename(paths["absent"]) == "test_absent.csv"
    for name in ("absent", "sparse"):
        assert len(rows[name]) == 30
        for mix, ref in zip(rows[name], rows["3mix"]):
            assert mix.sources == ref.sources[:2] and mix.noise == ()  # the same draws
            assert mix.length == ref.length
    assert all(m.activity == ("absent", 0, 0) for m in rows["absent"])
    assert all(m.activity is None for m in rows["2mix"] + rows["3mix"])
    for mix in rows["sparse"]:
        kind, start, stop = mix.activity
        n = lists.row_frames(mix.length)
        assert kind == "sparse" and 0 <= start < stop <= n
        assert 0.25 - 0.5 / n <= (stop - start) / n <= 0.5 + 0.5 / n
    again = lists.make_condition_lists(speech, str(tmp_path / "again"), 30,
                                       conditions=("2mix", "3mix", "absent", "sparse"), seed=4,
                                       sparse_fraction=(0.25, 0.5))
    for name, path in again.items():
        assert open(path).read() == open(paths[name]).read()  # seeded


def test_list_loader_silences_the_target_outside_its_span(tmp_path):
    from avse.data.loaders import make_list_loader

    speech = _speech_shards(tmp_path / "test")
    base = "test,test,id0,vid0/00001,0,test,id1,vid1/00001,0"
    rows = [lists.parse_row(f"{base},activity,sparse,20-35,0,2.4"),
            lists.parse_row(f"{base},activity,absent,0-0,0,2.4"),
            lists.parse_row(f"{base},2.4")]
    batches = list(make_list_loader(speech, rows, stage="test"))
    sparse, absent, plain = batches
    assert sparse.activity.shape == (1, 60)
    expect = np.zeros(60, np.float32)
    expect[20:35] = 1
    assert sparse.activity[0].tolist() == expect.tolist()
    assert absent.activity.sum() == 0 and plain.activity.sum() == 60
    for b in (sparse, absent):  # the target is silent outside its span
        act = b.activity[0].repeat_interleave(640)
        assert float(b.target[0][act == 0].abs().max()) == 0.0
        assert float(b.mixture[0][act == 0].abs().max()) > 0.0
    assert float(sparse.target[0][sparse.activity[0].repeat_interleave(640) == 1].abs().max()) > 0
    assert float(plain.target[0].abs().max()) > 0
    # lips at rest outside the span: the target's own silent frames (0 + offset-free value)
    assert (absent.visual[0] == 0).all() and (sparse.visual[0, 20:35] >= 100).all()
