"""Download, verify and extract MVTec AD.

    python RD4AD-main/main.py download --dest data/ [--url URL] [--archive LOCAL.tar.xz] [--sha256 HEX]

- download: progress bar; an interrupted download stays in ``<archive>.part`` and the next run resumes
  it with an HTTP Range request; an archive already at ``<dest>/<name>`` is used as it is.
- verify: SHA-256 against RD4AD_FACTS section 6 (or ``--sha256``); a downloaded file that does not
  match is removed, and the error names both hashes.
- extract: into a temporary folder inside ``dest``, then each top-level entry is renamed into place,
  so an interrupted extraction leaves no partial category behind. Members with absolute paths, ``..``,
  links leaving the archive or special files are refused before anything is written for them.

Offline (as on the build machines), the error says where to get the archive by hand and where to put it.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dataset import MVTEC_CATEGORIES, list_categories
from errors import DataError

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


def manual_instructions(dest: Path, name: str = ARCHIVE_NAME) -> str:
    return (
        f"Download {ARCHIVE_NAME} (about 5 GB) by hand from {MVTEC_PAGE}, put it at {dest / name} "
        f"and run this command again, or pass its location with --archive PATH."
    )


def archive_name(url: str) -> str:
    """File name to save ``url`` under: its own when it looks like a tar archive, else the MVTec one."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return name if name.endswith(ARCHIVE_SUFFIXES) else ARCHIVE_NAME


def fetch(url: str, path: Path, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``path`` through ``path.part``, resuming what an earlier run left there."""
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "rd4ad-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the .part is already whole
            part.replace(path)
            return path
        raise DataError(
            f"download of {url} failed: HTTP {error.code} {error.reason}. {manual_instructions(path.parent, path.name)}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"cannot reach {url} ({reason}); this machine looks offline. {manual_instructions(path.parent, path.name)}"
        ) from None
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                raise DataError(
                    f"{url}: asked for bytes from {offset}, the server sent from {start}; "
                    f"delete {part} and run again to download from the start"
                )
        else:
            offset = 0  # the server ignored the Range header (or there was none): start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as handle, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise DataError(
                f"download of {url} interrupted ({error}) at {part.stat().st_size} bytes; "
                f"run the same command again to resume from {part}"
            ) from None
    received = part.stat().st_size
    if total is not None and received < total:
        raise DataError(
            f"download of {url} stopped at {received} of {total} bytes; "
            f"run the same command again to resume from {part}"
        )
    part.replace(path)
    return path


def _content_range_start(value: str) -> int | None:
    match = re.match(r"bytes (\d+)-", value)
    return int(match.group(1)) if match else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"SHA-256 {path.name}", leave=False,
    ) as bar:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(path: Path, expected: str, remove_on_mismatch: bool) -> None:
    """Raise DataError unless ``path`` hashes to ``expected``; remove it first if asked to."""
    actual = sha256_of(path)
    if actual == expected.lower():
        return
    if remove_on_mismatch:
        path.unlink()
        what = "The file was removed; run again to download it afresh."
    else:
        what = "The file was left in place: it is damaged, incomplete or not the expected archive."
    raise DataError(f"{path}: SHA-256 mismatch: expected {expected.lower()}, got {actual}. {what}")


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or None when it is safe."""
    name = member.name
    if name.startswith("/") or posixpath.isabs(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in the path"
    if member.issym() or member.islnk():
        # symlink targets are relative to the member's folder, hard-link targets to the archive root
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if posixpath.isabs(member.linkname) or target == ".." or target.startswith("../"):
            return f"link to {member.linkname!r}, outside the destination"
        return None
    if not (member.isfile() or member.isdir()):
        return "special file (device, FIFO)"
    return None


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract ``archive`` into ``dest`` through a temporary folder there; return the top-level names."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # a second line of defence
    try:
        with open(archive, "rb") as raw, tqdm.wrapattr(
            raw, "read", total=archive.stat().st_size, desc=f"extracting {archive.name}", leave=False
        ) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                why = _refusal(member)
                if why is not None:
                    raise DataError(
                        f"{archive}: refused member {member.name!r} ({why}); the archive is unsafe, "
                        f"nothing was extracted (expected relative paths inside {dest})"
                    )
                tar.extract(member, tmp, **safety)
        names = sorted(entry.name for entry in tmp.iterdir())
        clashes = [name for name in names if (dest / name).exists()]
        if clashes:
            raise DataError(
                f"{dest / clashes[0]} already exists ({len(clashes)} of the archive's {len(names)} top-level "
                f"entries do); remove them or choose another --dest"
            )
        for name in names:
            os.replace(tmp / name, dest / name)
        return names
    except (tarfile.TarError, lzma.LZMAError, EOFError) as error:
        raise DataError(f"{archive}: not a readable tar archive ({error}); expected {ARCHIVE_NAME}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_and_extract(
    dest: str | os.PathLike, url: str = MVTEC_URL, archive: str | os.PathLike | None = None,
    sha256: str = MVTEC_SHA256,
) -> list[str]:
    """Fetch (unless ``archive`` is given), verify and extract; return the extracted top-level names."""
    dest = Path(dest)
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise DataError(f"--archive {path}: no such file; expected the downloaded {ARCHIVE_NAME}")
        verify(path, sha256, remove_on_mismatch=False)
    else:
        path = dest / archive_name(url)
        if path.is_file():
            print(f"using the archive already at {path}")
        else:
            dest.mkdir(parents=True, exist_ok=True)
            fetch(url, path)
        verify(path, sha256, remove_on_mismatch=True)
    return safe_extract(path, dest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=Path("data"), help="folder to extract into (default data/)")
    parser.add_argument("--url", default=MVTEC_URL, help="where to download the archive from (default: MVTec's)")
    parser.add_argument("--archive", type=Path, help=f"use this local {ARCHIVE_NAME} instead of downloading")
    parser.add_argument("--sha256", default=MVTEC_SHA256, help="expected SHA-256 of the archive (default: MVTec AD's)")


def run(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise DataError(f"--sha256 {args.sha256!r}: expected 64 hexadecimal digits")
    present = set(list_categories(args.dest)) if args.dest.is_dir() else set()
    if args.url == MVTEC_URL and args.archive is None and present >= set(MVTEC_CATEGORIES):
        print(f"MVTec AD is already in {args.dest} (all {len(MVTEC_CATEGORIES)} categories); nothing to do")
        return 0
    names = download_and_extract(args.dest, args.url, args.archive, args.sha256)
    categories = [name for name in list_categories(args.dest) if name in names]
    print(f"extracted {len(names)} entries into {args.dest}: {len(categories)} categories ({', '.join(categories)})")
    print(f"check them with: python RD4AD-main/main.py check-data --data-root {args.dest}")
    return 0
