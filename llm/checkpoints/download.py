"""``scratchbot download``: OpenAI's GPT-2 weights from the URLs the book uses, resumable and checked, to safetensors.

The seven files of a release land in ``DIR/<size>/`` exactly as the book's ``download_and_load_gpt2`` lays them out
(so the book's own code finds them too), then the weights are converted to ``DIR/<name>.safetensors``.

- Resumable: bytes go to ``<file>.part``; a dropped connection, or a later run, continues it with an HTTP Range
  request. Only a complete, checked file is renamed to its final name, so a final name means a good file.
- Checked: the size against Content-Length / Content-Range; the hash when one is known (``sha256=`` from the caller,
  ``Content-MD5`` of a whole-file response, Azure's ``x-ms-blob-content-md5``, Backblaze's ``x-bz-content-sha1``);
  and, in conversion, every tensor against the CRC32C the checkpoint index records. A file that fails is fetched again.
- Mirrors: each file is tried at OpenAI's URL, then at the book's backup mirror (or the ``base_urls`` given).

This is the only place the project reaches the network for weights; loaders always take a local path.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

# The sizes the book downloads, by this project's preset names; the release directories are named by size.
MODEL_SIZES: dict[str, str] = {
    "gpt2-small": "124M",
    "gpt2-medium": "355M",
    "gpt2-large": "774M",
    "gpt2-xl": "1558M",
}
OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
BOOK_MIRROR_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"  # the book's gpt_download.py backup
DEFAULT_BASE_URLS = (OPENAI_BASE_URL, BOOK_MIRROR_URL)
RELEASE_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# Fetched again when conversion finds a damaged tensor: the CRC32Cs live in the index, the bytes in the data file.
WEIGHT_FILES = ("model.ckpt.data-00000-of-00001", "model.ckpt.index")

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_USER_AGENT = "scratchbot-download/1"


class DownloadError(Exception):
    """A model could not be downloaded; the message says which file, from where, and what to try."""


class _DroppedError(Exception):
    """The connection ended after some bytes arrived: resume from where the partial file ends."""


class _WrongBytesError(Exception):
    """The bytes received are not the file (wrong size or hash): start that file over."""


@dataclass
class _Expected:
    """What one file should be, as learnt from the caller and from the servers' headers."""

    size: int | None = None
    hashes: dict[str, str] = field(default_factory=dict)  # hashlib name -> hex digest


def release_name(name: str) -> str:
    """The release directory (``124M``...) of a model name (``gpt2-small``...); the sizes are accepted too."""
    if name in MODEL_SIZES.values():
        return name
    if name not in MODEL_SIZES:
        choices = ", ".join(MODEL_SIZES)
        raise DownloadError(f"unknown model {name!r}; choose one of: {choices}")
    return MODEL_SIZES[name]


def download_gpt2(
    name: str,
    directory: str | os.PathLike[str],
    *,
    base_urls: Sequence[str] = DEFAULT_BASE_URLS,
    keep_original: bool = True,
    progress: bool | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download GPT-2 ``name`` into ``directory`` and convert it; return the safetensors file.

    Files already downloaded (final name present) are not fetched again. ``progress``: True/False shows or hides
    the progress bars; None shows them on a terminal only. ``keep_original=False`` deletes the TensorFlow files
    after a successful conversion.
    """
    # Imported here: fetching needs no torch, and `scratchbot --help` (which reads MODEL_SIZES) must not wait for it.
    from llm.checkpoints.openai import convert_openai_checkpoint
    from llm.checkpoints.tf_bundle import CorruptTensorError

    size = release_name(name)
    if not base_urls:
        raise DownloadError("no base URL to download from; leave the default or pass one")
    for base in base_urls:
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(f"base URL {base!r} is not an http:// or https:// address")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DownloadError(f"{directory} is a file; give a folder for the download (it is created if missing)")
    release = directory / size
    label = name if name in MODEL_SIZES else f"gpt2-{size}"
    dst = directory / f"{label}.safetensors"

    def fetch_all(names: Sequence[str]) -> None:
        for filename in names:
            urls = [f"{base.rstrip('/')}/{size}/{filename}" for base in base_urls]
            fetch_file(urls, release / filename, progress=progress, retries=retries, timeout=timeout)

    fetch_all(RELEASE_FILES)
    metadata = {"origin": f"OpenAI GPT-2 {size} ({label}), converted by scratchbot download"}
    try:
        convert_openai_checkpoint(release, dst, metadata=metadata)
    except CorruptTensorError as e:
        log.warning("%s; fetching the weights again", e)
        for filename in WEIGHT_FILES:
            (release / filename).unlink(missing_ok=True)
        fetch_all(WEIGHT_FILES)
        try:
            convert_openai_checkpoint(release, dst, metadata=metadata)
        except CorruptTensorError as again:
            raise DownloadError(f"{again}, even after downloading it again; try another mirror (--base-url)") from e
    if not keep_original:
        shutil.rmtree(release)
    log.info("GPT-2 %s is ready: %s", size, dst)
    return dst


def fetch_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    progress: bool | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download one file to ``dest``, trying ``urls`` in order; return ``dest``.

    A URL is left for the next one when it answers with an error or no bytes at all. A dropped connection is
    resumed from the partial file, and a wrong size or hash starts the file over, each up to ``retries`` times.
    """
    dest = Path(dest)
    if dest.exists():
        log.info("%s is already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected = _Expected(hashes={"sha256": sha256.lower()} if sha256 else {})
    problems: list[str] = []
    for url in urls:
        failures = 0
        while failures <= retries:
            try:
                _fetch_into(url, part, expected, progress=progress, timeout=timeout)
                _verify(part, expected)
            except _DroppedError as e:
                failures += 1
                problems.append(f"{url}: {e}")
                log.warning("%s: %s; resuming", dest.name, e)
                continue
            except _WrongBytesError as e:
                failures += 1
                problems.append(f"{url}: {e}")
                log.warning("%s: %s; fetching it again", dest.name, e)
                part.unlink(missing_ok=True)
                expected.size = None  # learnt again from the next response
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                problems.append(f"{url}: {_describe_error(e)}")
                log.warning("%s: %s failed (%s); trying the next source", dest.name, url, _describe_error(e))
                break
            os.replace(part, dest)
            return dest
    last = problems[-1] if problems else "no URL given"
    raise DownloadError(
        f"could not download {dest.name} ({last}); check the network connection, or pass --base-url with a "
        "mirror that has the GPT-2 files; what was downloaded is kept and the next run resumes it"
    )


def _fetch_into(url: str, part: Path, expected: _Expected, *, progress: bool | None, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when ``part`` is empty), learning size and hashes."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise
        # Nothing left after `offset`: the partial file is complete, or longer than the file (then start over).
        total = _parse_content_range(e.headers.get("Content-Range", ""))[2]
        e.close()
        if total != offset:
            raise _WrongBytesError(f"the partial file has {offset} bytes but the file has {total}") from None
        expected.size = total
        return
    with response:
        _learn_hashes(response, expected)
        if response.status == 206:
            start, _end, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                raise _WrongBytesError(f"asked for bytes from {offset}, the server sent them from {start}")
            mode = "ab"
        else:
            if offset:
                log.info("%s ignores resuming (Range); downloading %s from the start", url, part.name)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            if expected.size is not None and expected.size != total:
                raise _WrongBytesError(f"the server's size changed from {expected.size} to {total} bytes")
            expected.size = total
        name = part.name.removesuffix(".part")
        received = 0
        with (
            open(part, mode) as out,
            tqdm(total=total, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                 disable=None if progress is None else not progress) as bar,
        ):  # fmt: skip
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                if not received:
                    raise
                lost = offset + received
                raise _DroppedError(f"connection lost after {lost} bytes ({_describe_error(e)})") from e
    size = part.stat().st_size
    if expected.size is not None and size < expected.size:
        if not received:
            raise urllib.error.URLError(f"the server sent no bytes of the {expected.size - size} still missing")
        raise _DroppedError(f"connection ended at {size} of {expected.size} bytes")


def _verify(part: Path, expected: _Expected) -> None:
    size = part.stat().st_size
    if expected.size is not None and size != expected.size:
        raise _WrongBytesError(f"got {size} bytes, expected {expected.size}")
    if not expected.hashes:
        return
    digests = {algorithm: hashlib.new(algorithm) for algorithm in expected.hashes}
    with open(part, "rb") as f:
        while chunk := f.read(_CHUNK):
            for digest in digests.values():
                digest.update(chunk)
    for algorithm, want in expected.hashes.items():
        got = digests[algorithm].hexdigest()
        if got != want:
            raise _WrongBytesError(f"{algorithm} is {got}, expected {want}")


def _learn_hashes(response: http.client.HTTPResponse, expected: _Expected) -> None:
    """Whole-file hashes the server advertises. Content-MD5 covers the body sent, so only a 200's counts."""
    headers = response.headers
    md5 = headers.get("x-ms-blob-content-md5") or (headers.get("Content-MD5") if response.status == 200 else None)
    if md5:
        try:
            expected.hashes.setdefault("md5", base64.b64decode(md5, validate=True).hex())
        except ValueError:
            log.debug("ignoring a malformed MD5 header %r", md5)
    sha1 = (headers.get("x-bz-content-sha1") or "").removeprefix("unverified:").lower()
    if re.fullmatch(r"[0-9a-f]{40}", sha1):  # large Backblaze files say "none"
        expected.hashes.setdefault("sha1", sha1)


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 199, 1000); ``bytes */1000`` -> (None, None, 1000)."""
    found = _CONTENT_RANGE.match(value.strip())
    if not found:
        raise _WrongBytesError(f"the server sent an unreadable Content-Range {value!r}")
    start, end, total = found.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _describe_error(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__
