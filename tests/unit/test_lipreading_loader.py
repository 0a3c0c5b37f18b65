"""avse.data.loaders.text: lips + tokens batches from LRS-layout shards, curriculum cutting
at word boundaries, bad samples skipped and counted, equal steps per rank, http shards."""
import json
import os

import numpy as np
import pytest

from avse.data.loaders.text import (check_curriculum, ctc_frames_needed, cut_at_words,
                                    make_text_loader, text_vocab_size)
from avse.data.remote import serve_folder
from avse.data.shards import ShardError, write_split
from tests.lipreading_helpers import make_corpus

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("lr"), np.random.default_rng(0))


def test_eval_batches_pad_lips_and_tokens_with_relative_lengths(corpus):
    split, sp, samples = corpus
    loader = make_text_loader(split, batch_size=3, stage="test")
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(samples) and len(batches) == len(loader)
    seen = set()
    for b in batches:
        n = b.lips.shape[1]
        for i, key in enumerate(b.keys):
            lips, info = samples[key]["lips.npy"], samples[key]["json"]
            t = len(lips)
            assert b.lengths[i].item() == pytest.approx(t / n)
            np.testing.assert_array_equal(b.lips[i, :t].numpy(), lips)
            assert (b.lips[i, t:] == lips[-1]).all()  # padded by the last frame
            n_tok = round(b.token_lengths[i].item() * b.tokens.shape[1])
            assert b.tokens[i, :n_tok].tolist() == info["tokens"] and b.texts[i] == info["text"]
            assert (b.tokens[i, n_tok:] == 0).all()
        assert max(b.lengths.tolist()) == 1.0 and b.lips.dtype.is_floating_point is False
        seen.update(b.keys)
    assert seen == set(samples) and text_vocab_size(split) == sp.get_piece_size()


def test_curriculum_cuts_long_clips_at_word_boundaries(corpus):
    split, sp, samples = corpus
    loader = make_text_loader(split, batch_size=4, stage="train", epoch_steps=3,
                              curriculum=[[1, 1.0], [2, None]], shuffle_buffer=4)
    loader.set_epoch(1)
    clips = [c for b in loader for c in zip(b.keys, b.lips, b.lengths, b.texts, b.tokens,
                                            b.token_lengths)]
    assert len(clips) == 12
    for key, lips, rel, text, tokens, rel_tok in clips:
        base, _, seg = key.rpartition("_seg")
        assert seg.isdigit() and base in samples
        n = round(rel.item() * len(lips))
        assert 0 < n <= 25  # at most 1 s
        words = samples[base]["json"]["words"]
        first = int(lips[0, 0, 0])  # the source frame index of the segment's first frame
        ws = text.split()
        i = next(j for j in range(len(words)) if words[j][0] == ws[0]
                 and [w[0] for w in words[j:j + len(ws)]] == ws)
        assert words[i][1] - 0.1 - 0.04 <= first / 25 <= words[i][1] + 0.04  # starts at a word
        last = int(lips[n - 1, 0, 0])
        assert last / 25 <= words[i + len(ws) - 1][2] + 0.1 + 0.04  # ends after its last word
        assert tokens[:round(rel_tok.item() * tokens.shape[0])].tolist() == sp.encode(text)
    loader.set_epoch(2)  # from epoch 2: whole clips, their own tokens
    for b in loader:
        assert all(k in samples for k in b.keys)


def test_bad_samples_are_skipped_and_counted(tmp_path):
    bad = ("no_text", "no_lips", "bad_json", "ctc_too_short")
    split, _, samples = make_corpus(tmp_path, np.random.default_rng(1), n_clips=4, bad=bad)
    test = make_text_loader(split, batch_size=2, stage="test")
    keys = [k for b in test for k in b.keys]
    assert len(keys) == 5 and test.skipped == {"no_text": 1, "no_lips": 1, "bad_json": 1}
    train = make_text_loader(split, batch_size=2, stage="train", epoch_steps=8)
    assert sum(len(b) for b in train) == 16
    assert train.skipped["ctc_too_short"] >= 1 and set(train.skipped) <= set(bad)


def test_equal_steps_per_rank_and_disjoint_shards(corpus):
    split, _, samples = corpus
    keys = {}
    for rank in (0, 1):
        loader = make_text_loader(split, batch_size=2, stage="train", epoch_steps=5, rank=rank,
                                  world_size=2, shuffle_buffer=2)
        got = [b for b in loader]
        assert len(got) == 5 == len(loader) and all(len(b) == 2 for b in got)
        keys[rank] = {k for b in got for k in b.keys}
        evals = make_text_loader(split, batch_size=2, stage="valid", rank=rank, world_size=2)
        assert {k for b in evals for k in b.keys} <= keys[rank] | set(samples)
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == set(samples)


def test_http_shards_find_their_tokenizer(corpus):
    split, sp, samples = corpus
    root = os.path.dirname(os.path.dirname(split))
    with serve_folder(root) as url:
        loader = make_text_loader(f"{url}/shards/train", batch_size=4, stage="train",
                                  epoch_steps=2, curriculum=[[0, 0.8]])
        assert loader.dataset.tokenizer.where == f"{url}/tokenizer/spm.model"
        for b in loader:
            assert b.lips.shape[1] <= 20 and all("_seg" in k for k in b.keys)


def test_errors_name_what_is_wrong(corpus, tmp_path):
    split, _, _ = corpus
    with pytest.raises(ValueError, match="curriculum: expected"):
        check_curriculum([[1, 2.0, 3]])
    with pytest.raises(ValueError, match="maximum > 0"):
        check_curriculum([[1, 0]])
    with pytest.raises(ValueError, match="stage must be"):
        make_text_loader(split, stage="dev")
    bare = tmp_path / "bare"
    write_split([{"__key__": "a/main/00001", "lips.npy": np.zeros((4, 88, 88), np.uint8),
                  "json": {"spk": "a", "text": "KA", "tokens": [1]}}], str(bare))
    with pytest.raises(ShardError, match="vocab_size.*run the recipe's tokens stage"):
        text_vocab_size(str(bare))
    with pytest.raises(ShardError, match="no sentencepiece model"):
        make_text_loader(str(bare), stage="train", epoch_steps=1, curriculum=[[1, 1.0]])
    meta = json.load(open(os.path.join(split, "meta.json")))
    assert meta["tokenizer"] == "../../tokenizer/spm.model"


def test_cut_helpers():
    words = [["A", 0.0, 0.3], ["B", 0.35, 0.9], ["C", 1.0, 2.5]]
    segs = cut_at_words(words, 70, 1.0)
    assert [s[2] for s in segs] == [["A", "B"], ["C"]]  # C alone is longer than 1 s: kept
    assert segs[0][:2] == (0, 24) and segs[1][:2] == (25, 62)  # C: its own 1.5 s, no context
    assert ctc_frames_needed([1, 1, 2, 3, 3, 3]) == 9
