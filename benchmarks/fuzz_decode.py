"""Fuzz the JPEG path through its Python entry point for a bounded time (not part of CI).

    python benchmarks/fuzz_decode.py --seconds 60

A mutational loop (bit flips, truncations, byte splices, forged end markers of valid baseline,
progressive, grayscale and CMYK JPEGs) drives ``vaeflow_cli._native.decode_images``: each input
must give an error or a correctly shaped array — a crash (panic across the FFI, segfault) ends the
run with the input saved. Coverage-guided fuzzing of the same Rust code runs with cargo-fuzz
(libFuzzer; needs a nightly toolchain):

    cd native/fuzz && cargo +nightly fuzz run decode -- -max_total_time=60
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vaeflow_cli import _native


def seeds() -> list[bytes]:
    rng = np.random.RandomState(0)
    out = []
    for progressive in (False, True):
        for mode in ("RGB", "L", "CMYK"):
            buf = io.BytesIO()
            img = Image.fromarray(rng.randint(0, 256, size=(37, 29, 3)).astype(np.uint8)).convert(mode)
            img.save(buf, format="JPEG", quality=int(rng.randint(30, 95)), progressive=progressive)
            out.append(buf.getvalue())
    return out


def check(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    flat, failures = _native.decode_images([str(path)], 0, 8, 1)
    assert flat.shape == (8 * 8 * 3,)
    assert len(failures) <= 1


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op = rnd.random()
        if op < 0.5 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op < 0.7 and b:
            del b[rnd.randrange(len(b)) :]
        elif op < 0.9 and b:
            i = rnd.randrange(len(b))
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        else:
            b[rnd.randrange(len(b) or 1) :] = b"\xff\xd9"
    return bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vaeflow-fuzz-"))
    target = tmp / "input.jpg"
    rnd, corpus, n, t0 = random.Random(0), seeds(), 0, time.time()
    while time.time() - t0 < args.seconds:
        data = mutate(rnd.choice(corpus), rnd)
        (tmp / "last-input.jpg").write_bytes(data)  # left behind if the process dies here
        check(data, target)
        n += 1
    os.remove(tmp / "last-input.jpg")
    print(f"{n} mutated inputs in {args.seconds:.0f} s: no crash")


if __name__ == "__main__":
    main()
