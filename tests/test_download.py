"""download: fetch with resume from a server on 127.0.0.1, SHA-256 check, safe atomic extraction, offline help,
for MVTec AD (.tar.xz) and VisA (plain .tar)."""
from __future__ import annotations

import hashlib
import io
import re
import socket
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import main
from categories import MVTEC_CATEGORIES
from dataset import list_categories
from download import (
    ARCHIVES,
    MVTEC_PAGE,
    VISA_ARCHIVE_NAME,
    VISA_PAGE,
    VISA_SHA256,
    VISA_URL,
    download_and_extract,
    present_categories,
)
from errors import DataError
from visa_tree import write_visa_tree

NAME = "made_up_mvtec.tar.xz"


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["main.py"])  # main.main rewrites sys.argv; restored after the test
    return main.main(list(argv))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_xz(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:xz") -> bytes:
    """A tar.xz (or, with ``mode="w"``, a plain tar) in memory from (name, content) pairs and TarInfo (links)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A made-up MVTec-like archive: two small synthetic categories at the top level, and a readme."""
    from synth import generate

    root = tmp_path_factory.mktemp("archive_source")
    generate(root, image_size=32, n_train=5, n_test=4)
    members = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    return tar_xz([*members, ("readme.txt", b"made up for the tests\n")])


@pytest.fixture(scope="module")
def visa_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A made-up VisA-like plain .tar: LICENSE-DATASET, candle and pcb1 in VisA layout, split_csv/1cls.csv."""
    root = tmp_path_factory.mktemp("visa_source")
    write_visa_tree(root, n_train=5, n_test_normal=1, n_anomaly=2, image_size=32)
    members = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    return tar_xz(members, mode="w")


@pytest.fixture
def serve():
    """Start a one-file HTTP server on 127.0.0.1 with Range support; returns (url, Range headers seen)."""
    servers = []

    def start(payload: bytes, cut_first_at: int | None = None, honour_range: bool = True, name: str = NAME):
        ranges: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                requested = self.headers.get("Range")
                ranges.append(requested)
                if self.path != f"/{name}":
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested and honour_range else 0
                if start >= len(payload) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                self.send_header("Content-Length", str(len(payload) - start))
                self.end_headers()
                body = payload[start:]
                if cut_first_at is not None and len(ranges) == 1:
                    body = body[:cut_first_at]  # then the connection drops: an interrupted download
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/{name}", ranges

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url(name: str = "mvtec_anomaly_detection.tar.xz") -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(".extract-"))


def test_interrupted_download_resumes_end_to_end(tmp_path, archive, serve, monkeypatch, capsys):
    url, ranges = serve(archive, cut_first_at=10_000)
    dest = tmp_path / "data"
    message = rf"stopped at 10000 of {len(archive)} bytes; run the same command again to resume"
    with pytest.raises(DataError, match=message):
        download_and_extract(dest, url, sha256=sha256(archive))
    assert (dest / f"{NAME}.part").stat().st_size == 10_000 and not (dest / NAME).exists()

    assert run_cli(monkeypatch, "download", "--dest", str(dest), "--url", url, "--sha256", sha256(archive)) == 0
    assert ranges == [None, "bytes=10000-"]
    assert (dest / NAME).read_bytes() == archive and not (dest / f"{NAME}.part").exists()
    assert list_categories(dest) == ["synth_object", "synth_texture"]
    assert (dest / "readme.txt").is_file() and leftovers(dest) == []
    assert "2 categories (synth_object, synth_texture)" in capsys.readouterr().out


def test_resume_from_an_existing_part_file(tmp_path, archive, serve):
    url, ranges = serve(archive)
    (tmp_path / f"{NAME}.part").write_bytes(archive[:1000])
    download_and_extract(tmp_path, url, sha256=sha256(archive))
    assert ranges == ["bytes=1000-"] and (tmp_path / NAME).read_bytes() == archive


def test_server_without_range_support_restarts(tmp_path, archive, serve):
    url, ranges = serve(archive, honour_range=False)
    (tmp_path / f"{NAME}.part").write_bytes(b"stale bytes")
    download_and_extract(tmp_path, url, sha256=sha256(archive))
    assert ranges == ["bytes=11-"] and (tmp_path / NAME).read_bytes() == archive


def test_complete_part_file_answered_416(tmp_path, archive, serve):
    url, _ = serve(archive)
    (tmp_path / f"{NAME}.part").write_bytes(archive)
    download_and_extract(tmp_path, url, sha256=sha256(archive))
    assert list_categories(tmp_path) == ["synth_object", "synth_texture"]


def test_wrong_hash_removes_the_file_and_names_both_hashes(tmp_path, archive, serve):
    url, _ = serve(archive)
    wrong = "ab" * 32
    message = rf"SHA-256 mismatch: expected {wrong}, got {sha256(archive)}\. The file was removed"
    with pytest.raises(DataError, match=message):
        download_and_extract(tmp_path, url, sha256=wrong)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_local_archive_with_wrong_hash_is_kept(tmp_path, archive, monkeypatch, capsys):
    local = tmp_path / "mine.tar.xz"
    local.write_bytes(archive)
    dest = tmp_path / "data"
    assert run_cli(monkeypatch, "download", "--dest", str(dest), "--archive", str(local), "--sha256", "0" * 64) == 2
    assert f"expected {'0' * 64}, got {sha256(archive)}. The file was left in place" in capsys.readouterr().err
    assert local.is_file() and not dest.exists()


def test_local_archive_is_extracted_without_network(tmp_path, archive):
    local = tmp_path / "mine.tar.xz"
    local.write_bytes(archive)
    names = download_and_extract(tmp_path / "data", closed_port_url(), archive=local, sha256=sha256(archive))
    assert names == ["readme.txt", "synth_object", "synth_texture"]


def test_archive_already_in_dest_is_used(tmp_path, archive):
    (tmp_path / "mvtec_anomaly_detection.tar.xz").write_bytes(archive)
    download_and_extract(tmp_path, closed_port_url(), sha256=sha256(archive))
    assert list_categories(tmp_path) == ["synth_object", "synth_texture"]


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (("../evil.txt", b"x"), r"refused member '\.\./evil\.txt' \('\.\.' in the path\)"),
        (("good/../../evil.txt", b"x"), r"'\.\.' in the path"),
        (("/tmp/evil.txt", b"x"), r"refused member '/tmp/evil\.txt' \(absolute path\)"),
        (link("good/escape", "../../evil.txt"), r"member 'good/escape' \(link to '\.\./\.\./evil\.txt', outside"),
        (link("good/abs", "/etc/passwd"), r"link to '/etc/passwd', outside the destination"),
        (link("good/hard", "../evil.txt", tarfile.LNKTYPE), r"refused member 'good/hard' \(link to '\.\./evil\.txt'"),
        (link("good/fifo", "", tarfile.FIFOTYPE), r"special file"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, member, why):
    outside = tmp_path / "outside"
    dest = outside / "inside" / "data"
    local = tmp_path / "unsafe.tar.xz"
    payload = tar_xz([("good/file.txt", b"fine"), member, ("late/file.txt", b"after")])
    local.write_bytes(payload)
    with pytest.raises(DataError, match=rf"{local}: .*{why}.*nothing was extracted"):
        download_and_extract(dest, archive=local, sha256=sha256(payload))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outside", "outside/inside", "outside/inside/data", "unsafe.tar.xz",
    ]


def test_links_inside_the_archive_are_allowed(tmp_path):
    payload = tar_xz([("cat/file.txt", b"fine"), link("cat/alias.txt", "file.txt"),
                      link("cat/copy.txt", "cat/file.txt", tarfile.LNKTYPE)])
    local = tmp_path / "ok.tar.xz"
    local.write_bytes(payload)
    download_and_extract(tmp_path / "data", archive=local, sha256=sha256(payload))
    assert (tmp_path / "data" / "cat" / "alias.txt").read_bytes() == b"fine"
    assert (tmp_path / "data" / "cat" / "copy.txt").read_bytes() == b"fine"


def test_existing_entries_are_not_overwritten(tmp_path, archive):
    local = tmp_path / "mine.tar.xz"
    local.write_bytes(archive)
    dest = tmp_path / "data"
    (dest / "synth_object").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"{dest / 'synth_object'} already exists \(1 of the archive's 3 top-level"):
        download_and_extract(dest, archive=local, sha256=sha256(archive))
    assert sorted(p.name for p in dest.iterdir()) == ["synth_object"]


def test_not_a_tar_archive(tmp_path):
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match=rf"{junk}: not a readable tar archive"):
        download_and_extract(tmp_path / "data", archive=junk, sha256=sha256(junk.read_bytes()))


def test_offline_message_says_what_to_do(tmp_path, monkeypatch, capsys):
    dest = tmp_path / "data"
    assert run_cli(monkeypatch, "download", "--dest", str(dest), "--url", closed_port_url()) == 2
    err = capsys.readouterr().err
    assert "this machine looks offline" in err and MVTEC_PAGE in err
    assert f"put it at {dest / 'mvtec_anomaly_detection.tar.xz'}" in err and "--archive PATH" in err


def test_http_error_and_bad_arguments(tmp_path, archive, serve, monkeypatch, capsys):
    url, _ = serve(archive)
    with pytest.raises(DataError, match=r"HTTP 404 .*Download mvtec_anomaly_detection.tar.xz .*by hand"):
        download_and_extract(tmp_path, url.replace(NAME, "other.tar.xz"), sha256=sha256(archive))
    assert run_cli(monkeypatch, "download", "--dest", str(tmp_path), "--sha256", "xyz") == 2
    assert "--sha256 'xyz': expected 64 hexadecimal digits" in capsys.readouterr().err
    assert run_cli(monkeypatch, "download", "--dest", str(tmp_path), "--archive", str(tmp_path / "no.tar.xz")) == 2
    assert "no.tar.xz: no such file" in capsys.readouterr().err


def test_nothing_to_do_when_mvtec_is_already_there(tmp_path, monkeypatch, capsys):
    for category in MVTEC_CATEGORIES:
        (tmp_path / category / "train" / "good").mkdir(parents=True)
    assert run_cli(monkeypatch, "download", "--dest", str(tmp_path)) == 0
    assert "already in" in capsys.readouterr().out


# ---------------------------------------------------------------- VisA and the default data roots


def test_official_archives():
    assert ARCHIVES["visa"].url == VISA_URL and VISA_URL.endswith("/" + VISA_ARCHIVE_NAME)
    assert re.fullmatch(r"[0-9a-f]{64}", VISA_SHA256) and re.fullmatch(r"[0-9a-f]{64}", ARCHIVES["mvtec"].sha256)
    assert {name: str(spec.default_root) for name, spec in ARCHIVES.items()} == {
        "mvtec": "data/mvtec_anomaly_detection", "visa": "data/visa", "mvtec_ad2": "data/mvtec_ad_2",
        "mvtec_loco": "data/mvtec_loco_anomaly_detection"}


def test_visa_from_a_server_end_to_end(tmp_path, visa_archive, serve, monkeypatch, capsys):
    url, ranges = serve(visa_archive, name=VISA_ARCHIVE_NAME)
    dest = tmp_path / "visa"
    args = ("download", "--dataset", "visa", "--data-root", str(dest), "--url", url, "--sha256", sha256(visa_archive))
    assert run_cli(monkeypatch, *args) == 0
    assert ranges == [None] and (dest / VISA_ARCHIVE_NAME).read_bytes() == visa_archive
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE-DATASET", VISA_ARCHIVE_NAME, "candle", "pcb1",
                                                      "split_csv"]
    out = capsys.readouterr().out
    assert "extracted 4 entries" in out and "2 categories (candle, pcb1)" in out and "note:" not in out
    assert list_categories(dest) == ["candle", "pcb1"]
    assert run_cli(monkeypatch, "check-data", "--data-root", str(dest), "--image-size", "32", "--decode") == 0
    assert "2 categories OK" in capsys.readouterr().out


def test_default_data_roots(tmp_path, archive, visa_archive, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mvtec.tar.xz").write_bytes(archive)
    (tmp_path / "visa.tar").write_bytes(visa_archive)
    assert run_cli(monkeypatch, "download", "--archive", "mvtec.tar.xz", "--sha256", sha256(archive)) == 0
    assert list_categories(tmp_path / "data" / "mvtec_anomaly_detection") == ["synth_object", "synth_texture"]
    assert run_cli(monkeypatch, "download", "--dataset", "visa", "--archive", "visa.tar",
                   "--sha256", sha256(visa_archive)) == 0
    assert list_categories(tmp_path / "data" / "visa") == ["candle", "pcb1"]
    assert "check-data --data-root data/visa" in capsys.readouterr().out


def test_visa_offline_message_says_what_to_do(tmp_path, monkeypatch, capsys):
    dest = tmp_path / "visa"
    assert run_cli(monkeypatch, "download", "--dataset", "visa", "--data-root", str(dest),
                   "--url", closed_port_url(VISA_ARCHIVE_NAME)) == 2
    err = capsys.readouterr().err
    assert "this machine looks offline" in err and VISA_URL in err and VISA_PAGE in err
    assert f"put it at {dest / VISA_ARCHIVE_NAME}" in err and "--archive PATH" in err


def test_visa_wrong_hash_is_refused(tmp_path, visa_archive):
    local = tmp_path / VISA_ARCHIVE_NAME
    local.write_bytes(visa_archive)
    with pytest.raises(DataError, match=rf"SHA-256 mismatch: expected {VISA_SHA256}, got {sha256(visa_archive)}"):
        download_and_extract(tmp_path / "visa", archive=local, dataset="visa")


def test_nothing_to_do_when_visa_is_already_there(tmp_path, monkeypatch, capsys):
    for category in ARCHIVES["visa"].categories:
        (tmp_path / category / "Data" / "Images").mkdir(parents=True)
    assert present_categories(tmp_path, "visa") == []  # without its split file VisA is not complete
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    assert present_categories(tmp_path, "visa") == list(ARCHIVES["visa"].categories)
    assert run_cli(monkeypatch, "download", "--dataset", "visa", "--data-root", str(tmp_path)) == 0
    assert "VisA is already in" in capsys.readouterr().out
