"""`scratchbot download` against mirrors on 127.0.0.1 that serve a tiny GPT-2 release in OpenAI's layout.

The mirror speaks HTTP as the real hosts do (Range requests, 206/416, Content-MD5) and can drop a connection or
corrupt a file once. Nothing here reaches the internet: every URL is local, and a guard fails any test that tries.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from pathlib import Path

import pytest
import torch

from bot.cli.main import main
from llm.checkpoints.download import RELEASE_FILES, DownloadError, download_gpt2, fetch_file
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.openai import convert_openai_checkpoint
from tests.llm.local_http import QuietHandler, closed_port_url, refuse_non_local_urls, serve

FIXTURE = Path(__file__).parent / "fixtures" / "tf_gpt2"
FILES = {f"/124M/{name}": (FIXTURE / name).read_bytes() for name in RELEASE_FILES}
DATA = "/124M/model.ckpt.data-00000-of-00001"


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_non_local_urls(monkeypatch)


class Mirror:
    """A release host: files by path, Range requests, optional Content-MD5, and faults that happen once."""

    def __init__(self, *, md5: bool = False, status: int | None = None, ranges: bool = True) -> None:
        self.files = dict(FILES)
        self.md5 = md5  # send Content-MD5 of the true file with whole-file answers, as Azure does
        self.status = status  # answer every request with this error status
        self.ranges = ranges  # False: ignore Range and always send the whole file
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the connection drops, once
        self.corrupt_once: set[str] = set()  # paths whose next answer has one byte flipped
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._lock = threading.Lock()

    def handler(self) -> type[QuietHandler]:
        mirror = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                mirror.respond(self)

        return Handler

    def ranges_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def respond(self, h: QuietHandler) -> None:
        with self._lock:
            self.requests.append((h.path, h.headers.get("Range")))
            cut = self.cut_once.pop(h.path, None)
            corrupt = h.path in self.corrupt_once
            self.corrupt_once.discard(h.path)
        body = self.files.get(h.path)
        if self.status or body is None:
            h.send_error(self.status or 404)
            return
        start, code = 0, 200
        asked = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if asked and self.ranges:
            start, code = int(asked.group(1)), 206
            if start >= len(body):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(body)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        payload = bytearray(body[start:])
        if corrupt:
            payload[len(payload) // 2] ^= 0x01
        h.send_response(code)
        h.send_header("Content-Length", str(len(payload)))
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if self.md5 and code == 200:
            h.send_header("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
        h.end_headers()
        h.wfile.write(payload if cut is None else payload[:cut])
        h.wfile.flush()  # HTTP/1.0: the connection closes now, short of Content-Length when cut


@pytest.fixture
def mirror() -> Mirror:
    return Mirror()


def download(directory: Path, *urls: str, **kwargs: object) -> Path:
    return download_gpt2("gpt2-small", directory, base_urls=urls, progress=False, timeout=5, **kwargs)


def assert_release_intact(directory: Path) -> None:
    for path, body in FILES.items():
        assert (directory / path.lstrip("/")).read_bytes() == body, path
    assert not list(directory.rglob("*.part"))


def assert_same_model(path: Path, directory: Path) -> None:
    """The downloaded checkpoint equals a conversion of the fixture itself (whose correctness test_tf_bundle shows)."""
    reference = load_checkpoint(convert_openai_checkpoint(FIXTURE, directory / "reference.safetensors")).model
    loaded = load_checkpoint(path).model
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# ------------------------------------------------------------------------------------------------ the happy path


def test_download_fetches_the_release_and_converts_it(tmp_path: Path, mirror: Mirror) -> None:
    with serve(mirror.handler()) as url:
        path = download(tmp_path, url)
    assert path == tmp_path / "gpt2-small.safetensors"
    assert_release_intact(tmp_path)
    assert_same_model(path, tmp_path)
    assert sorted(p for p, _ in mirror.requests) == sorted(FILES)
    assert all(r is None for _, r in mirror.requests)


def test_a_second_download_fetches_nothing(tmp_path: Path, mirror: Mirror) -> None:
    with serve(mirror.handler()) as url:
        download(tmp_path, url)
        mirror.requests.clear()
        download(tmp_path, url)
    assert mirror.requests == []


def test_delete_original_keeps_only_the_checkpoint(tmp_path: Path, mirror: Mirror) -> None:
    with serve(mirror.handler()) as url:
        path = download(tmp_path, url, keep_original=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-small.safetensors"]
    assert_same_model(path, tmp_path)


# ---------------------------------------------------------------------------------------------------- resuming


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path: Path, mirror: Mirror) -> None:
    mirror.cut_once[DATA] = 4000
    with serve(mirror.handler()) as url:
        path = download(tmp_path, url)
    first, second = mirror.ranges_for(DATA)
    assert first is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert 0 < resumed_at <= 4000
    assert_release_intact(tmp_path)
    assert_same_model(path, tmp_path)


def test_a_partial_file_left_by_an_earlier_run_is_resumed(tmp_path: Path, mirror: Mirror) -> None:
    part = tmp_path / "124M" / "model.ckpt.data-00000-of-00001.part"
    part.parent.mkdir()
    part.write_bytes(FILES[DATA][:5000])
    with serve(mirror.handler()) as url:
        download(tmp_path, url)
    assert mirror.ranges_for(DATA) == ["bytes=5000-"]
    assert_release_intact(tmp_path)


def test_a_partial_file_longer_than_the_file_starts_over(tmp_path: Path, mirror: Mirror) -> None:
    part = tmp_path / "124M" / "hparams.json.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * 1000)  # a stale piece of something else
    with serve(mirror.handler()) as url:
        download(tmp_path, url)
    assert mirror.ranges_for("/124M/hparams.json") == ["bytes=1000-", None]
    assert_release_intact(tmp_path)


def test_a_server_that_ignores_range_sends_the_whole_file_again(tmp_path: Path) -> None:
    mirror = Mirror(ranges=False)
    mirror.cut_once[DATA] = 3000
    with serve(mirror.handler()) as url:
        download(tmp_path, url)
    assert len(mirror.ranges_for(DATA)) == 2
    assert_release_intact(tmp_path)


# -------------------------------------------------------------------------------------------------- corruption


def test_a_file_that_fails_its_md5_is_fetched_again(tmp_path: Path) -> None:
    mirror = Mirror(md5=True)
    mirror.corrupt_once.add("/124M/model.ckpt.index")
    with serve(mirror.handler()) as url:
        path = download(tmp_path, url)
    assert mirror.ranges_for("/124M/model.ckpt.index") == [None, None]
    assert_release_intact(tmp_path)
    assert_same_model(path, tmp_path)


def test_damaged_weights_without_a_server_hash_fail_their_crc32c_and_are_fetched_again(
    tmp_path: Path, mirror: Mirror
) -> None:
    mirror.corrupt_once.add(DATA)  # same size, no Content-MD5: only the checkpoint's own CRC32Cs can tell
    with serve(mirror.handler()) as url:
        path = download(tmp_path, url)
    assert mirror.ranges_for(DATA) == [None, None]
    assert_release_intact(tmp_path)
    assert_same_model(path, tmp_path)


def test_weights_that_stay_damaged_give_a_clear_error(tmp_path: Path, mirror: Mirror) -> None:
    broken = bytearray(FILES[DATA])
    broken[100] ^= 0x01
    mirror.files[DATA] = bytes(broken)
    with serve(mirror.handler()) as url, pytest.raises(DownloadError, match=r"CRC32C.*even after downloading"):
        download(tmp_path, url)


def test_a_known_sha256_that_does_not_match_is_never_accepted(tmp_path: Path, mirror: Mirror) -> None:
    dest = tmp_path / "hparams.json"
    with serve(mirror.handler()) as url, pytest.raises(DownloadError, match="sha256"):
        fetch_file([f"{url}/124M/hparams.json"], dest, sha256="0" * 64, retries=1, progress=False, timeout=5)
    assert not dest.exists()
    assert len(mirror.requests) == 2  # the first try and one retry
    good = hashlib.sha256(FILES["/124M/hparams.json"]).hexdigest()
    with serve(mirror.handler()) as url:
        fetch_file([f"{url}/124M/hparams.json"], dest, sha256=good, progress=True, timeout=5)
    assert dest.read_bytes() == FILES["/124M/hparams.json"]


# ----------------------------------------------------------------------------------------------------- mirrors


@pytest.mark.parametrize("primary_fault", ["http-500", "nothing-listening"])
def test_the_backup_mirror_is_used_when_the_primary_fails(tmp_path: Path, primary_fault: str) -> None:
    primary, backup = Mirror(status=500), Mirror()
    with serve(primary.handler()) as primary_url, serve(backup.handler()) as backup_url:
        first = primary_url if primary_fault == "http-500" else closed_port_url()
        path = download(tmp_path, first, backup_url)
    assert sorted(p for p, _ in backup.requests) == sorted(FILES)
    if primary_fault == "http-500":
        assert len(primary.requests) == len(FILES)  # each file tried there once, then left for the backup
    assert_same_model(path, tmp_path)


def test_every_mirror_failing_is_one_clear_error(tmp_path: Path) -> None:
    failing = Mirror(status=503)
    with serve(failing.handler()) as url, pytest.raises(DownloadError) as caught:
        download(tmp_path, url, closed_port_url())
    message = str(caught.value)
    assert "could not download checkpoint" in message and "--base-url" in message


def test_an_unknown_model_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"unknown model 'gpt2-huge'; choose one of: gpt2-small, gpt2-medium"):
        download_gpt2("gpt2-huge", tmp_path)
    assert not tmp_path.joinpath("gpt2-huge").exists()


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_download_prints_the_checkpoint_it_wrote(tmp_path: Path, mirror: Mirror, capsys) -> None:
    with serve(mirror.handler()) as url:
        code = main(["download", "gpt2-small", "--dir", str(tmp_path), "--base-url", url, "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'gpt2-small.safetensors'}"
    assert_same_model(tmp_path / "gpt2-small.safetensors", tmp_path)


def test_cli_download_of_an_unknown_model_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["download", "gpt2-huge", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchbot: error: unknown model 'gpt2-huge'") and "\n" not in err


@pytest.mark.parametrize("base", ["ftp://mirror.example/gpt2", "openaipublic.blob.core.windows.net/gpt-2/models", ""])
def test_a_base_url_that_is_not_http_is_refused_before_anything_is_written(tmp_path: Path, base: str) -> None:
    with pytest.raises(DownloadError, match="is not an http:// or https:// address"):
        download_gpt2("gpt2-small", tmp_path / "models", base_urls=[base])
    assert not (tmp_path / "models").exists()


def test_cli_download_into_a_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    not_a_folder = tmp_path / "weights"
    not_a_folder.write_text("mine")
    assert main(["download", "gpt2-small", "--dir", str(not_a_folder), "--base-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file; give a folder" in err and "\n" not in err and not_a_folder.read_text() == "mine"
