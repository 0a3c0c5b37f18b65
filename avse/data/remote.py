"""Where shards live: a local folder, a web server or an object store (WebDataset URLs).

:func:`resolve_split` turns what a yaml's ``train_shards`` names into shard URLs +
``meta.json``:

- a local split folder ``DIR`` (``shard-*.tar`` + ``meta.json`` [+ ``speakers.txt``]);
- an http(s) prefix ``https://host/path/train``: ``meta.json`` (and ``speakers.txt``
  when there) are fetched from beside the shards; the shard URLs come from meta.json;
- a WebDataset URL spec: a brace pattern (``DIR/shard-{000000..000007}.tar``,
  ``https://host/train/shard-{000000..000007}.tar``), several joined by ``::``, a list of
  URLs, or ``pipe:`` commands (``pipe:aws s3 cp s3://b/train/shard-{000000..000511}.tar -``).
  ``meta`` gives the meta.json location (a path, URL or ``pipe:`` command); by default
  the meta.json beside a local or http pattern. ``speakers.txt`` is looked for where
  meta.json is (in a ``pipe:`` command, the name ``meta.json`` replaced).

http(s) is opened by :func:`gopen_http` (urllib, streaming, a few retries before the
first byte), which :func:`register_http_handler` puts in WebDataset's ``gopen_schemes``
in place of its ``curl`` subprocess when this module is imported: nothing needs curl.
Other schemes (``pipe:``, ``gs://``, ...) go through ``webdataset.gopen`` unchanged.

Example
-------
>>> import tempfile, numpy as np
>>> from avse.data.shards import write_split
>>> d = tempfile.mkdtemp()
>>> s = {"__key__": "id1/vid/00001", "flac": np.zeros(640, np.float32),
...      "lips.npy": np.zeros((1, 88, 88), np.uint8), "json": {"spk": "id1"}}
>>> meta = write_split([s, {**s, "__key__": "id1/vid/00002"}], d, shard_size=1)
>>> split = resolve_split(d + "/shard-{000000..000001}.tar")
>>> len(split.urls), split.meta["count"], split.local_dir == d
(2, 2, True)
"""
from __future__ import annotations

import contextlib
import http.server
import importlib
import json
import os
import re
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlparse

import webdataset as wds

from avse.data.shards import (ShardError, check_meta, member_key, read_meta, shard_urls,
                              split_speakers)

wds_gopen = importlib.import_module("webdataset.gopen")  # the module, not wds.gopen()
HTTP_TIMEOUT = 60.0  # seconds without data before a read fails
HTTP_RETRIES = 3  # attempts to open a URL (connection errors, HTTP 5xx)


def _http_error(url: str, err: Exception) -> ShardError:
    if isinstance(err, urllib.error.HTTPError):
        hint = ("check the URL: is the split served there?" if err.code == 404
                else "check the server and its access rules")
        return ShardError(f"{url}: HTTP {err.code} {err.reason}; {hint}")
    reason = getattr(err, "reason", err)
    return ShardError(f"{url}: cannot be fetched ({reason}); check that the server is up and "
                      "the host, port and path are right")


def gopen_http(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """Open an http(s) URL for streaming reads with urllib (a WebDataset ``gopen`` handler).

    Retries ``HTTP_RETRIES`` times on connection errors and HTTP 5xx; a 4xx, or the last
    failure, raises :class:`ShardError` naming the URL.
    """
    if mode != "rb":
        raise ShardError(f"{url}: only reading is supported over http (mode {mode!r})")
    for attempt in range(HTTP_RETRIES):
        try:
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == HTTP_RETRIES - 1:
                raise _http_error(url, err) from err
        except (urllib.error.URLError, OSError) as err:
            if attempt == HTTP_RETRIES - 1:
                raise _http_error(url, err) from err
        time.sleep(0.5 * 2 ** attempt)


def register_http_handler():
    """Let WebDataset open http(s) with :func:`gopen_http` instead of a ``curl`` subprocess.

    Replaces only WebDataset's own curl handler (a handler someone else registered stays).
    """
    for scheme in ("http", "https"):
        if wds_gopen.gopen_schemes.get(scheme) in (wds_gopen.gopen_curl, None):
            wds_gopen.gopen_schemes[scheme] = gopen_http


register_http_handler()


def is_local(url: str) -> bool:
    """A path (or ``file:`` URL) rather than a URL WebDataset opens with a handler."""
    return urlparse(url).scheme in ("", "file")


def local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def read_url(url: str, missing_ok: bool = False) -> bytes | None:
    """The bytes at a path, http(s) URL or ``pipe:`` command; ``None`` when missing and
    ``missing_ok`` (a ``pipe:`` command that fails counts as missing)."""
    if is_local(url):
        if not os.path.isfile(local_path(url)):
            if missing_ok:
                return None
            raise ShardError(f"{url} not found")
        with open(local_path(url), "rb") as f:
            return f.read()
    try:
        stream = wds_gopen.gopen(url, "rb")
        try:
            return stream.read()
        finally:
            stream.close()
    except (ShardError, OSError, ValueError) as err:
        if missing_ok:
            return None
        if isinstance(err, ShardError):
            raise
        raise ShardError(f"{url}: cannot be read ({_describe(err)}); check the URL or run the "
                         "command in a shell") from err


def _beside(url: str, name: str) -> str:
    """``name`` in the folder of ``url`` (a path or URL)."""
    return url.rsplit("/", 1)[0] + "/" + name if "/" in url else name


def is_url_spec(source) -> bool:
    """A list of URLs, a brace pattern, ``::``-joined URLs, a ``pipe:`` command or one ``.tar``."""
    return (isinstance(source, (list, tuple)) or "{" in source or "::" in source
            or source.startswith("pipe:") or source.endswith(".tar"))


@dataclass
class ShardSplit:
    """A split's shard URLs (in order), its meta.json, and where ``speakers.txt`` may be."""

    urls: list
    meta: dict
    name: str  # for messages
    local_dir: str | None = None  # a local split folder
    speakers_url: str | None = None  # elsewhere

    def speakers(self, urls=None, tolerant: bool = False) -> list:
        """Sorted speaker ids: ``speakers.txt`` when it matches meta.json, else a scan of the
        ``json`` members of ``urls`` (default: every shard). ``tolerant``: the scan passes
        over shards and samples that cannot be read (the training loader skips and counts
        them when it reads them)."""
        if self.local_dir is not None and urls is None and not tolerant:
            return split_speakers(self.local_dir)
        if self.local_dir is not None:
            data = read_url(os.path.join(self.local_dir, "speakers.txt"), missing_ok=True)
        else:
            data = read_url(self.speakers_url, missing_ok=True) if self.speakers_url else None
        if data is not None:
            speakers = [s.strip() for s in data.decode().splitlines() if s.strip()]
            if len(speakers) == self.meta.get("speakers"):
                return sorted(speakers)
        if self.local_dir is None:
            warnings.warn(f"{self.name}: no speakers.txt matching meta.json at "
                          f"{self.speakers_url}; reading the json member of every shard to list "
                          "the speakers. Put one there (avse.data.shards.write_speakers_file) "
                          "or pass speakers", UserWarning, stacklevel=3)
        return scan_speakers_of(self.urls if urls is None else urls, tolerant)


def _ignore(url, key, err, n_samples):
    """An ``on_error`` that passes over what cannot be read (the loader reports it later)."""


def scan_speakers_of(urls, tolerant: bool = False) -> list:
    """Sorted speaker ids from the ``json`` members of shards at any URLs WebDataset reads
    (``tolerant``: passing over shards and members that cannot be read)."""
    pipe = wds.DataPipeline(wds.SimpleShardList(list(urls)),
                            partial(tar_samples, select=lambda name: name.endswith(".json"),
                                    on_error=_ignore if tolerant else None,
                                    skip_unopened=tolerant))
    speakers = set()
    for s in pipe:
        try:
            speakers.add(json.loads(s["json"]).get("spk") or s["__key__"].split("/")[0])
        except (KeyError, ValueError, AttributeError):
            if not tolerant:
                raise ShardError(f"{s.get('__url__')}: sample {s['__key__']} has no readable "
                                 "json member; re-run the recipe's shard stage") from None
    return sorted(speakers)


def _members(shards, select=None, on_error=None):
    """``{fname, data, __url__}`` of the regular members of opened shards, ``{}`` after each.

    ``on_error(url, key, error, n_samples)``: called when a shard fails to read (``key``: the
    sample being read, None between samples; ``n_samples``: the samples already given from
    this shard); it returns to go on with the next shard, or raises. With it, the members of
    a sample are held back until the sample is complete, so a sample cut short by a
    truncated tar is never given. Without it, a failure raises :class:`ShardError`."""
    for shard in shards:
        stream, url = shard["stream"], shard["url"]
        held, key, n_done = [], None, 0
        try:
            seekable = getattr(stream, "seekable", lambda: False)()
            # a file: random access (one read a member); a stream: 1 MB reads, not 10 kB
            with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|",
                              bufsize=1 << 20) as tar:
                for member in tar:
                    if member.isreg() and (select is None or select(member.name)):
                        if on_error is not None:
                            name = member_key(member.name)[0]
                            if name != key and held:
                                yield from held
                                held, n_done = [], n_done + 1
                            key = name
                        item = {"fname": member.name, "data": tar.extractfile(member).read(),
                                "__url__": url}
                        if on_error is None:
                            yield item
                        else:
                            held.append(item)
                    if not seekable:
                        tar.members = []
            stream.close()  # here a failed pipe: command is an error
            yield from held
            yield {}
        except Exception as exn:
            try:  # a pipe: command that failed gives an empty stream: say how it exited
                stream.close()
            except Exception as closing:  # noqa: BLE001 (WebDataset raises a plain Exception)
                exn = closing
            exn.args = exn.args + (url,)
            if on_error is None:
                reraise_shard_error(exn)
            try:
                on_error(url, key, exn, n_done)
            except ShardError:
                raise
            except Exception as err:  # noqa: BLE001
                reraise_shard_error(err)
            yield {}  # the partial sample (held) is dropped
        finally:
            with contextlib.suppress(Exception):  # the reader stopped mid-shard
                stream.close()


def tar_samples(src, select=None, on_error=None, skip_unopened: bool = False):
    """Stage: ``{"url": ...}`` items -> raw samples (``__key__``, ``__url__``, bytes per field).

    ``wds.tarfile_to_samples`` with WebDataset's URL opening and grouping, but a local
    shard is read with one read a member and a stream in 1 MB reads (WebDataset 1.0.2
    reads every stream in 10 kB records: 40 % of the training loader's time on 1 MB lips).
    ``select(member name)``: which members to keep. ``on_error``: see :func:`_members`;
    ``skip_unopened``: a shard that cannot be opened goes to ``on_error`` too (else raises).
    """
    def opening_failed(exn):
        url = next((a for a in reversed(exn.args) if isinstance(a, str)), "?")
        try:
            on_error(url, None, exn, 0)
        except ShardError:
            raise
        except Exception as err:  # noqa: BLE001
            reraise_shard_error(err)
        return True  # go on with the next shard

    handler = opening_failed if on_error is not None and skip_unopened else reraise_shard_error
    shards = wds.tariterators.url_opener(src, handler=handler)
    return wds.tariterators.group_by_keys(_members(shards, select, on_error),
                                          handler=reraise_shard_error)


def _describe(exn: Exception) -> str:
    """An exception's first argument; a failed ``pipe:`` command as its exit status."""
    first = str(exn.args[0]) if exn.args else repr(exn)
    status = re.search(r"\)\: exit (-?\d+) \(read\)", first)  # webdataset.gopen.Pipe
    return f"the command failed (exit status {status.group(1)})" if status else first


def reraise_shard_error(exn: Exception):
    """A WebDataset ``handler``: raise :class:`ShardError` naming the shard that failed."""
    if isinstance(exn, ShardError):
        raise ShardError(exn.args[0]) from exn  # without the stream/URL WebDataset appends
    url = next((a for a in reversed(exn.args) if isinstance(a, str)), "?")
    raise ShardError(f"reading shard {url}: {_describe(exn)}; check that it exists and is a tar "
                     "written by the recipe's shard stage") from exn


def _load_meta(url: str) -> dict:
    data = read_url(url)
    try:
        meta = json.loads(data)
    except ValueError as err:
        raise ShardError(f"{url}: not a meta.json ({err}); pass meta= the split's meta.json") \
            from err
    return check_meta(meta, url)


def _check_files(urls, name):
    missing = [u for u in urls if is_local(u) and not os.path.isfile(local_path(u))]
    if missing:
        raise ShardError(f"{name}: {len(missing)} shard(s) not found, e.g. {missing[0]}")


def resolve_split(source, meta: str | None = None, missing_ok: bool = False) -> ShardSplit:
    """Shard URLs and meta.json of a split named by a folder, an http(s) prefix or a URL spec.

    See the module docstring for the forms. ``meta``: where meta.json is, needed for a
    ``pipe:`` spec. A spec must expand to meta.json's ``num_shards`` URLs. Local shards
    that do not exist are an error unless ``missing_ok`` (then :func:`check_shards` says
    which).
    """
    if not isinstance(source, (list, tuple)):
        source = os.fspath(source)
        if not is_url_spec(source):
            if meta is not None:
                raise ShardError(f"{source}: a split folder or prefix has its meta.json beside "
                                 "the shards; meta= is for URL specs (patterns, lists, pipe:)")
            if is_local(source):
                info = read_meta(source)
                urls = ([os.path.join(source, info["shard_pattern"] % i)
                         for i in range(info["num_shards"])] if missing_ok else shard_urls(source))
                return ShardSplit(urls, info, source, local_dir=source)
            base = source.rstrip("/")
            info = _load_meta(base + "/meta.json")
            urls = [f"{base}/{info['shard_pattern'] % i}" for i in range(info["num_shards"])]
            return ShardSplit(urls, info, source, speakers_url=base + "/speakers.txt")
        urls = wds.shardlists.expand_urls(source)
    else:
        urls = [os.fspath(u) for u in source]
    name = source if isinstance(source, str) else f"{urls[0]} (+{len(urls) - 1} more)"
    if not urls:
        raise ShardError(f"{name}: no shard URL")
    if meta is None:
        if urls[0].startswith("pipe:"):
            raise ShardError(f"{name}: pass meta= the location of the split's meta.json "
                             "(a path, an http(s) URL or a pipe: command that prints it)")
        meta = _beside(urls[0], "meta.json")
    folder = os.path.dirname(local_path(meta)) if is_local(meta) else None
    if folder is not None and os.path.isfile(os.path.join(folder, "meta.json")) and \
            os.path.basename(local_path(meta)) == "meta.json":
        info, local_dir, speakers_url = read_meta(folder), folder, None
    else:
        info, local_dir = _load_meta(meta), None
        speakers_url = (meta.replace("meta.json", "speakers.txt")
                        if meta.count("meta.json") == 1 else None)
    if len(urls) != info["num_shards"]:
        raise ShardError(f"{name}: {len(urls)} shard URL(s) but {meta} lists "
                         f"{info['num_shards']}; name every shard of the split")
    if not missing_ok:
        _check_files(urls, name)
    return ShardSplit(urls, info, name, local_dir=local_dir, speakers_url=speakers_url)


def shard_problem(url: str) -> str | None:
    """Why a local shard cannot be read (missing, empty, no tar header), or None: it exists
    and its first tar header reads. Other URLs (http, ``pipe:``) are not checked here."""
    if not is_local(url):
        return None
    path = local_path(url)
    if not os.path.isfile(path):
        return "missing"
    try:
        with open(path, "rb") as f:
            block = f.read(tarfile.BLOCKSIZE)
        if not block:
            return "empty file"
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.EOFHeaderError:  # zeros: an empty tar (its readers say so)
        return None
    except tarfile.TarError as err:
        return f"not a tar ({err})"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def check_shards(urls, name: str, skip: bool = False):
    """``(good urls, {bad url: why})``: every local shard must exist and start with a tar
    header. Bad ones raise one :class:`ShardError` naming them, or (``skip``) are left out
    with a warning. Every rank finds the same, so all still split the same shards."""
    bad = {}
    for url in urls:
        problem = shard_problem(url)
        if problem:
            bad[url] = problem
    if not bad:
        return list(urls), bad
    listed = "; ".join(f"{u}: {why}" for u, why in list(bad.items())[:5]) + (
        f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    good = [u for u in urls if u not in bad]
    if not skip:
        raise ShardError(f"{name}: {len(bad)} of {len(urls)} shard(s) cannot be read: {listed}. "
                         "Re-run the recipe's shard stage, or set skip_bad_shards: true to "
                         "train without them")
    if not good:
        raise ShardError(f"{name}: none of its {len(urls)} shard(s) can be read: {listed}")
    warnings.warn(f"{name}: skipping {len(bad)} of {len(urls)} shard(s) that cannot be read "
                  f"(skip_bad_shards): {listed}", UserWarning, stacklevel=3)
    return good, bad


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a reader that stops mid-shard
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_folder(root: str, host: str = "127.0.0.1", port: int = 0):
    """Serve ``root`` over http in a thread (tests, benchmarks): yields ``http://host:port``.

    ``port=0`` takes a free port; the server stops when the ``with`` block ends.
    """
    handler = partial(_QuietHandler, directory=os.fspath(root))
    server = _QuietServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def num_speakers(source, meta: str | None = None) -> int:
    """How many speakers a split holds (its ``meta.json``), for any split :func:`resolve_split`
    takes (a local folder too), e.g. the size of MuSE's speaker classifier in a yaml:
    ``num_speakers: !apply:avse.data.remote.num_speakers [<train_shards>, <train_shards_meta>]``."""
    count = resolve_split(source, meta).meta.get("speakers")
    if not count:
        raise ShardError(f"{source}: its meta.json has no speaker count; set num_speakers by hand")
    return int(count)
