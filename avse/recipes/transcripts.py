"""Transcripts and sentencepiece tokens, shared by the LRS2 and LRS3 recipes.

- :func:`parse_transcript` / :func:`read_transcript`: the LRS transcript format (``Text:``
  line, header lines, an optional ``WORD START END ASDSCORE`` table).
- :func:`probe_with_transcript`: the manifest worker that adds ``text``, ``conf`` and
  ``words`` to an entry from the ``<clip>.txt`` beside its mp4, then probes the duration.
- :func:`stage_tokens`: sentencepiece trained on one split's transcripts
  (``OUT/tokenizer/{spm.model, spm.vocab, tokenizer.json}``).
- :func:`stage_shards`: the shards stage of :mod:`avse.recipes.stages` with the
  transcript fields (and token ids, when a tokenizer is given) in every sample's json.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

from avse.recipes import stages
from avse.recipes.common import RecipeError, Summary, is_done, mark_done, params_hash, read_jsonl


# --------------------------------------------------------------------------- transcripts
class TranscriptError(ValueError):
    """A transcript file is missing or malformed (the message names file and line)."""


_HEADER = re.compile(r"^([A-Za-z]+):\s*(.*)$")


def parse_transcript(text: str, where: str = "<transcript>") -> dict:
    """Parse an LRS2 / LRS3 transcript.

    The file starts with ``Text:  <WORDS>``, then header lines such as ``Conf:  <n>``, a
    blank line and, optionally, a ``WORD START END ASDSCORE`` table (times in seconds).
    Returns ``{"text": str, "conf": number or None, "words": [[word, start, end], ...]}``;
    raises TranscriptError naming ``where:<line>``.

    Example
    -------
    >>> t = parse_transcript("Text:  HELLO THERE\\nConf:  4\\n\\nWORD START END ASDSCORE\\n"
    ...                      "HELLO 0.10 0.40 5.1\\nTHERE 0.45 0.80 4.2\\n")
    >>> t["text"], t["conf"], t["words"][1]
    ('HELLO THERE', 4, ['THERE', 0.45, 0.8])
    """
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if not first.startswith("Text:"):
        raise TranscriptError(f"{where}:1: expected 'Text:  <WORDS>', got {first[:40]!r}")
    words_text = " ".join(first[len("Text:"):].split())
    if not words_text:
        raise TranscriptError(f"{where}:1: the 'Text:' line is empty")
    conf, n = None, 1
    while n < len(lines) and lines[n].strip():  # header lines up to the first blank line
        match = _HEADER.match(lines[n].strip())
        if not match:
            raise TranscriptError(f"{where}:{n + 1}: expected 'Name:  value' or a blank line, "
                                  f"got {lines[n][:40]!r}")
        if match.group(1) == "Conf":
            try:
                conf = float(match.group(2))
            except ValueError:
                raise TranscriptError(f"{where}:{n + 1}: 'Conf:' must be a number, "
                                      f"got {match.group(2)[:20]!r}") from None
            conf = int(conf) if conf.is_integer() else conf
        n += 1
    rows = [(i + 1, line.split()) for i, line in enumerate(lines[n:], n) if line.strip()]
    words = []
    if rows:
        lineno, header = rows[0]
        if [h.upper() for h in header[:3]] != ["WORD", "START", "END"]:
            raise TranscriptError(f"{where}:{lineno}: expected the 'WORD START END ASDSCORE' "
                                  f"table header, got {' '.join(header)[:40]!r}")
        for lineno, parts in rows[1:]:
            try:
                if len(parts) != len(header):
                    raise ValueError
                start, end = float(parts[1]), float(parts[2])
                [float(p) for p in parts[3:]]
            except ValueError:
                raise TranscriptError(f"{where}:{lineno}: expected '{' '.join(header)}', "
                                      f"got {' '.join(parts)[:40]!r}") from None
            if not 0.0 <= start <= end:
                raise TranscriptError(f"{where}:{lineno}: word {parts[0]!r} starts at {start} "
                                      f"and ends at {end}")
            words.append([parts[0], start, end])
    return {"text": words_text, "conf": conf, "words": words}


def read_transcript(path: str) -> dict:
    """:func:`parse_transcript` of a file; a missing or undecodable file is a TranscriptError."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise TranscriptError(f"no transcript {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TranscriptError(f"{path}: cannot read ({err})") from None
    return parse_transcript(text, where=path)


def probe_with_transcript(entry):
    """Manifest worker: parse ``<clip>.txt`` beside the mp4, then probe the duration."""
    try:
        entry.update(read_transcript(os.path.splitext(entry["media"])[0] + ".txt"))
    except TranscriptError as err:
        return entry, f"malformed transcript: {err}"
    return stages.probe_entry(entry)


# --------------------------------------------------------------------------- tokens
def tokenizer_dir(out_dir: str) -> str:
    """``OUT/tokenizer``: where the tokens stage writes its model."""
    return os.path.join(out_dir, "tokenizer")


def stage_tokens(out_dir: str, vocab_size: int = 500, model_type: str = "unigram",
                 byte_fallback: bool = False, train_split: str = "train") -> dict:
    """Train sentencepiece on the ``train_split`` transcripts of the manifest.

    Writes ``OUT/tokenizer/{spm.model, spm.vocab, tokenizer.json}``; ``vocab_size`` is an
    upper bound (``hard_vocab_limit=False``: a small corpus gives fewer pieces). Without
    ``byte_fallback``, characters never seen in training become ``<unk>`` (id 0).
    Returns the tokenizer.json dict.
    """
    import sentencepiece as spm

    if vocab_size < 2:
        raise RecipeError(f"--vocab_size must be at least 2, got {vocab_size}")
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    texts = [e["text"] for e in entries if e["split"] == train_split]
    if not texts:
        raise RecipeError(f"no {train_split} transcripts in {out_dir}/manifest.jsonl: the tokens "
                          f"stage trains on the {train_split} split (include it in --splits)")
    tok_dir = tokenizer_dir(out_dir)
    info_path = os.path.join(tok_dir, "tokenizer.json")
    params = {"vocab_size": vocab_size, "model_type": model_type, "byte_fallback": byte_fallback,
              "train_split": train_split, "texts": params_hash(texts)}
    marker = os.path.join(out_dir, ".done", "tokens")
    if is_done(marker, params) and os.path.isfile(info_path):
        print(f"[tokens] {tok_dir} is up to date; skipping")
        with open(info_path) as f:
            return json.load(f)
    summary = Summary("tokens", unit="transcripts")
    os.makedirs(tok_dir, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=os.path.join(tok_dir, "spm"),
            vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
            character_coverage=1.0, byte_fallback=byte_fallback, unk_id=0, bos_id=-1,
            eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
    except (RuntimeError, OSError) as err:
        raise RecipeError(f"sentencepiece could not train on {len(texts)} {train_split} "
                          f"transcripts (--vocab_size {vocab_size}, --model_type {model_type}): "
                          f"{err}") from None
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "spm.model"))
    lossy = sum(sp.decode(sp.encode(e["text"])) != e["text"] for e in entries)
    info = {"model": "spm.model", "vocab": "spm.vocab", "vocab_size": sp.get_piece_size(),
            "requested_vocab_size": vocab_size, "model_type": model_type,
            "byte_fallback": byte_fallback, "unk_id": 0, "trained_on": train_split,
            "num_transcripts": len(texts)}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    mark_done(marker, params, vocab_size=info["vocab_size"])
    note = f"{info['vocab_size']} pieces"
    if info["vocab_size"] < vocab_size:
        note += f" (asked {vocab_size}: the {train_split} transcripts support no more)"
    note += f"; {len(entries) - lossy} of {len(entries)} transcripts decode back exactly"
    if lossy:
        note += f" ({lossy} hold characters unseen in {train_split}: <unk>; try --byte_fallback)"
    summary.line(len(texts), 0, processed=len(texts), note=note)
    return info


# --------------------------------------------------------------------------- shards
def transcript_fields(out_dir: str, tokenizer: str | None = None):
    """``(extra_json, extra_meta)`` for the shards: transcript fields per key, and token ids
    from the sentencepiece model ``tokenizer`` when given."""
    extra = {e["key"]: {"text": e["text"], "conf": e["conf"], "words": e["words"]}
             for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))}
    meta = {}
    if tokenizer:
        import sentencepiece as spm

        if not os.path.isfile(tokenizer):
            raise RecipeError(f"tokenizer model {tokenizer} not found")
        sp = spm.SentencePieceProcessor(model_file=tokenizer)
        for fields in extra.values():
            fields["tokens"] = sp.encode(fields["text"])
        with open(tokenizer, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        shards_dir = os.path.join(out_dir, "shards")  # the path is relative to a split folder
        meta = {"tokenizer": os.path.join("..", os.path.relpath(tokenizer, shards_dir)),
                "tokenizer_sha1": digest, "vocab_size": sp.get_piece_size()}
    return extra, meta


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8, seed: int = 0,
                 corpus: str = "lrs2", tokenizer: str | None = "auto") -> dict:
    """:func:`avse.recipes.stages.stage_shards` with the transcript (and token) fields in
    the json; ``corpus`` names the crop in meta.json for extracts of older runs (the crop
    stage 2 recorded otherwise).

    ``tokenizer="auto"`` takes ``OUT/tokenizer/spm.model`` when the tokens stage wrote it;
    None adds no token ids.
    """
    if tokenizer == "auto":
        tokenizer = os.path.join(tokenizer_dir(out_dir), "spm.model")
        if not os.path.isfile(tokenizer):
            print(f"[shards] no {tokenizer}: the json holds no token ids (run the tokens stage)",
                  file=sys.stderr)
            tokenizer = None
    extra_json, extra_meta = transcript_fields(out_dir, tokenizer)
    return stages.stage_shards(out_dir, shard_size, shard_multiple, seed, corpus=corpus,
                               crop=corpus, extra_json=extra_json, extra_meta=extra_meta)


