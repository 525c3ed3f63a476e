"""Download, verify and extract MVTec AD or VisA; verify and extract MVTec AD 2 or MVTec LOCO AD fetched by hand.

    python RD4AD-main/main.py download [--dataset mvtec|visa|mvtec_ad2|mvtec_loco] [--data-root DIR] [--url URL]
                                       [--archive LOCAL.tar.xz|LOCAL.tar] [--sha256 HEX]

``--data-root`` (also spelled ``--dest``) defaults to ``data/mvtec_anomaly_detection`` for MVTec AD,
``data/visa`` for VisA, ``data/mvtec_ad_2`` and ``data/mvtec_loco_anomaly_detection``: the folder that later
commands take as their ``--data-root``.

- by hand (MVTec AD 2, MVTec LOCO AD): MVTec hands these archives out only after one accepts their licence
  (CC BY-NC-SA 4.0) on the dataset's page, so this command does not fetch them: without ``--archive`` it says
  where to get the archive; with it, it verifies and extracts as below. MVTec LOCO AD's SHA-256 is the one
  anomalib pins for that archive; for MVTec AD 2 no checksum is published, so the archive's own SHA-256 is
  printed instead (nothing is checked unless ``--sha256`` is given).

- download: progress bar; an interrupted download stays in ``<archive>.part`` and the next run resumes
  it with an HTTP Range request; an archive already at ``<data-root>/<name>`` is used as it is.
- verify: SHA-256 against the official hash (docs/reproduction.md#6-mvtec-ad, docs/reproduction.md#8-visa;
  or ``--sha256``); a downloaded file that does not match is removed, and the error names both hashes.
- extract: into a temporary folder inside the data root, then each top-level entry is renamed into place,
  so an interrupted extraction leaves no partial category behind. Members with absolute paths, ``..``,
  links leaving the archive or special files are refused before anything is written for them. MVTec AD
  is a ``.tar.xz``, VisA a plain ``.tar``; both go through the same code.

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
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from categories import MVTEC_AD2_CATEGORIES, MVTEC_CATEGORIES, MVTEC_LOCO_CATEGORIES, VISA_CATEGORIES
from dataset import MVTEC_MARKER, VISA_MARKER, VISA_SPLIT_FILE
from errors import DataError

__all__ = [
    "AD2_ARCHIVE_NAME", "AD2_PAGE", "ARCHIVES", "ARCHIVE_NAME", "LOCO_ARCHIVE_NAME", "LOCO_PAGE", "LOCO_SHA256",
    "MVTEC_PAGE", "MVTEC_SHA256", "MVTEC_URL", "VISA_ARCHIVE_NAME", "VISA_PAGE", "VISA_SHA256", "VISA_URL", "Archive",
    "add_arguments", "archive_name", "download_and_extract", "fetch", "manual_instructions", "present_categories",
    "run", "safe_extract", "sha256_of", "verify",
]

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
# VisA's public bucket and the hash anomalib checks it against (anomalib's VisA data module)
VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
VISA_PAGE = "https://github.com/amazon-science/spot-diff"
VISA_SHA256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
VISA_ARCHIVE_NAME = "VisA_20220922.tar"
# by hand: MVTec hands these out after one accepts the licence on the page (no URL here)
LOCO_PAGE = "https://www.mvtec.com/research-teaching/datasets/mvtec-loco-ad"
LOCO_ARCHIVE_NAME = "mvtec_loco_anomaly_detection.tar.xz"
LOCO_SHA256 = "9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687"  # anomalib's MVTec LOCO DOWNLOAD_INFO
AD2_PAGE = "https://www.mvtec.com/research-teaching/datasets/mvtec-ad-2"
AD2_ARCHIVE_NAME = "mvtec_ad_2.tar.gz"  # no SHA-256 is published for it
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Archive:
    """One dataset's official archive, and what its extraction must yield (``url`` empty: fetched by hand only;
    ``sha256`` empty: none published)."""

    title: str
    url: str
    sha256: str
    file_name: str
    page: str
    size: str  # for the by-hand instructions, e.g. "about 5 GB"; "" when not known
    default_root: Path
    categories: tuple[str, ...]
    marker: Path  # what every category folder holds once extracted
    required: tuple[Path, ...] = ()  # other paths the dataset needs (VisA's split file)


ARCHIVES: dict[str, Archive] = {
    "mvtec": Archive("MVTec AD", MVTEC_URL, MVTEC_SHA256, ARCHIVE_NAME, MVTEC_PAGE, "about 5 GB",
                     Path("data") / "mvtec_anomaly_detection", MVTEC_CATEGORIES, MVTEC_MARKER),
    "visa": Archive("VisA", VISA_URL, VISA_SHA256, VISA_ARCHIVE_NAME, VISA_PAGE, "",
                    Path("data") / "visa", VISA_CATEGORIES, VISA_MARKER, (VISA_SPLIT_FILE,)),
    "mvtec_ad2": Archive("MVTec AD 2", "", "", AD2_ARCHIVE_NAME, AD2_PAGE, "", Path("data") / "mvtec_ad_2",
                         MVTEC_AD2_CATEGORIES, MVTEC_MARKER),
    "mvtec_loco": Archive("MVTec LOCO AD", "", LOCO_SHA256, LOCO_ARCHIVE_NAME, LOCO_PAGE, "",
                          Path("data") / "mvtec_loco_anomaly_detection", MVTEC_LOCO_CATEGORIES, MVTEC_MARKER),
}


def _archive(dataset: str) -> Archive:
    if dataset not in ARCHIVES:
        raise DataError(f"--dataset {dataset!r}: expected one of {', '.join(ARCHIVES)}")
    return ARCHIVES[dataset]


def manual_instructions(dest: Path, name: str = ARCHIVE_NAME, dataset: str = "mvtec") -> str:
    """What to do by hand when the archive cannot be downloaded here."""
    spec = _archive(dataset)
    size = f" ({spec.size})" if spec.size else ""
    if not spec.url:
        return (
            f"{spec.title} is not downloaded by this command: MVTec hands its archive out after you accept its licence "
            f"(CC BY-NC-SA 4.0) on {spec.page}. Download {spec.file_name} there by hand, then run "
            f"`main.py download --dataset {dataset} --archive PATH --data-root {dest}`: "
            + (f"its SHA-256 is checked against {spec.sha256} and it is extracted safely." if spec.sha256 else
               "no SHA-256 is published for it, so its own is printed (pass --sha256 HEX to check one you trust); "
               "it is extracted safely.")
        )
    source = spec.page if dataset == "mvtec" else f"{spec.url} (the dataset's page: {spec.page})"
    return (
        f"Download {spec.file_name}{size} by hand from {source}, put it at {dest / name} "
        f"and run this command again, or pass its location with --archive PATH."
    )


def archive_name(url: str, dataset: str = "mvtec") -> str:
    """File name to save ``url`` under: its own when it looks like a tar archive, else the dataset's."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return name if name.endswith(ARCHIVE_SUFFIXES) else _archive(dataset).file_name


def fetch(url: str, path: Path, timeout: float = TIMEOUT_S, dataset: str = "mvtec") -> Path:
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
            f"download of {url} failed: HTTP {error.code} {error.reason}. "
            f"{manual_instructions(path.parent, path.name, dataset)}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"cannot reach {url} ({reason}); this machine looks offline. "
            f"{manual_instructions(path.parent, path.name, dataset)}"
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
    """SHA-256 of a file, read in chunks with a progress bar."""
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
    """Raise DataError unless ``path`` hashes to ``expected``; remove it first if asked to. With ``expected`` empty
    (no checksum published) nothing is checked: the file's SHA-256 is printed, to be recorded."""
    actual = sha256_of(path)
    if not expected:
        print(f"note: no SHA-256 is published for {path.name}, so nothing was checked; its SHA-256 is {actual} "
              f"(record it to check copies later)")
        return
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
                f"entries do); remove them or choose another --data-root"
            )
        for name in names:
            os.replace(tmp / name, dest / name)
        return names
    except (tarfile.TarError, lzma.LZMAError, EOFError) as error:
        raise DataError(
            f"{archive}: not a readable tar archive ({error}); expected a .tar, .tar.xz, .tar.gz or .tar.bz2 file"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_and_extract(
    dest: str | os.PathLike, url: str | None = None, archive: str | os.PathLike | None = None,
    sha256: str | None = None, *, dataset: str = "mvtec",
) -> list[str]:
    """Fetch (unless ``archive`` is given), verify and extract; return the extracted top-level names.

    ``url`` and ``sha256`` default to the official ones of ``dataset`` (``"mvtec"`` or ``"visa"``).
    """
    spec = _archive(dataset)
    url = spec.url if url is None else url
    sha256 = spec.sha256 if sha256 is None else sha256
    dest = Path(dest)
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise DataError(f"--archive {path}: no such file; expected the downloaded {spec.file_name}")
        verify(path, sha256, remove_on_mismatch=False)
    else:
        path = dest / archive_name(url, dataset)
        if path.is_file():
            print(f"using the archive already at {path}")
        else:
            dest.mkdir(parents=True, exist_ok=True)
            fetch(url, path, dataset=dataset)
        verify(path, sha256, remove_on_mismatch=True)
    return safe_extract(path, dest)


def present_categories(dest: Path, dataset: str) -> list[str]:
    """The dataset's official categories already extracted in ``dest`` (with their split file, for VisA)."""
    spec = _archive(dataset)
    if not all((dest / required).exists() for required in spec.required):
        return []
    return [name for name in spec.categories if (dest / name / spec.marker).is_dir()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=tuple(ARCHIVES), default="mvtec",
                        help="which data set: mvtec (MVTec AD, default), visa (VisA), mvtec_ad2 (MVTec AD 2) or "
                             "mvtec_loco (MVTec LOCO AD; these two by hand: --archive)")
    parser.add_argument("--data-root", "--dest", dest="data_root", type=Path,
                        help="folder to extract into, the --data-root of later commands (default "
                             "data/mvtec_anomaly_detection; data/visa, data/mvtec_ad_2 or "
                             "data/mvtec_loco_anomaly_detection with --dataset)")
    parser.add_argument("--url", help="where to download the archive from (default: the official one)")
    parser.add_argument("--archive", type=Path, help="use this local archive instead of downloading")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive (default: the official one)")


def run(args: argparse.Namespace) -> int:
    spec = _archive(args.dataset)
    dest = args.data_root if args.data_root is not None else spec.default_root
    sha256 = spec.sha256 if args.sha256 is None else args.sha256
    if (sha256 or args.sha256 is not None) and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DataError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    if not spec.url and args.url is not None:
        raise DataError(f"--url: {spec.title} is fetched by hand (licence), not by this command. "
                        f"{manual_instructions(dest, dataset=args.dataset)}")
    official_source = args.url in (None, spec.url) and args.archive is None
    if official_source and dest.is_dir() and len(present_categories(dest, args.dataset)) == len(spec.categories):
        print(f"{spec.title} is already in {dest} (all {len(spec.categories)} categories); nothing to do")
        return 0
    if not spec.url and args.archive is None:
        raise DataError(manual_instructions(dest, dataset=args.dataset))
    names = download_and_extract(dest, args.url, args.archive, sha256, dataset=args.dataset)
    categories = [name for name in names if (dest / name / spec.marker).is_dir()]
    print(f"extracted {len(names)} entries into {dest}: {len(categories)} categories ({', '.join(categories)})")
    nested = [dest / name for name in names if not categories and (dest / name).is_dir()
              and any((folder / spec.marker).is_dir() for folder in (dest / name).iterdir())]
    if nested:
        dest = nested[0]
        print(f"note: the archive keeps its categories in {dest}: pass --data-root {dest} to later commands")
    missing = [str(dest / required) for required in spec.required if not (dest / required).exists()]
    if missing:
        print(f"note: {', '.join(missing)} not found; the {spec.title} layout needs it (or pass --split-csv FILE)")
    print(f"check them with: python RD4AD-main/main.py check-data --data-root {dest}")
    return 0
