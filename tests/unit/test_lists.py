"""VoxMix list format: parse, write, round trip, errors, generation."""
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
