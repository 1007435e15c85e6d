"""Data-path benchmark: the Rust decoder and dequantizer against the obvious alternatives, side by
side in one run (ratios, since these machines are noisy). Prints a JSON object as its last line.

    python benchmarks/data.py [--images 400] [--repeats 3]
    python benchmarks/data.py --folder /tmp/data/train --images 0 --crop 0 --size 32        # real CIFAR-10 JPEGs
    python benchmarks/data.py --folder /tmp/data/celeba-align-half --images 0 --crop-box 22,12,64,64 --size 64

Decoding: CelebA-format JPEGs it generates (178x218, quality 90, smooth photo-like content),
centre crop 148 and resize to 64, one thread each unless stated; or, with --folder, the real
.jpg files under that folder (the first --images in path order, 0 for all) with --crop (a centred
square, 0 for the shorter side) or --crop-box (top,left,height,width) and --size. The Rust path
and Pillow decode the same files in alternating rounds (best of --repeats each). Dequantization:
uint8 batches of 256 x 3 x 64 x 64.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from best_time import best_time  # benchmarks/, the scripts' folder, is on sys.path
from PIL import Image

from vaeflow_cli.data.decode import decode_images
from vaeflow_cli.data.dequantization import dequantize

CROP, SIZE = 148, 64


def make_jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.RandomState(0)
    h, w = 218, 178
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    paths = []
    for i in range(n):
        f = rng.uniform(1, 6, size=6)
        img = np.stack(
            [np.sin(f[0] * 6 * xx + f[1] * 3 * yy), np.cos(f[2] * 5 * yy + f[3] * xx), np.sin(f[4] * 4 * (xx + yy)) * np.cos(f[5] * 3 * xx)], -1
        )
        img = (img + 1) * 110 + rng.normal(0, 6, size=img.shape)  # texture, like skin and hair
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def pillow_decode(paths, *, draft: bool, crop=CROP, size: int = SIZE) -> np.ndarray:
    """Pillow's decode, crop (a centred square, 0 the shorter side, or a (top, left, height, width)
    box) and Lanczos resize: the obvious alternative to the Rust path."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            w, h = im.size
            if isinstance(crop, tuple):
                top, left, ch, cw = crop
            else:
                cw = ch = crop or min(w, h)
                top, left = (h - ch) // 2, (w - cw) // 2
            if draft:  # let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling), still >= the target
                im.draft("RGB", (math.ceil(w * size / cw), math.ceil(h * size / ch)))
            im = im.convert("RGB")
            s = im.size[0] / w
            box = (left * s, top * s, (left + cw) * s, (top + ch) * s)
            out[i] = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep-jpegs", metavar="DIR", help="write the generated JPEGs here and keep them")
    ap.add_argument("--folder", type=Path, help="decode the real .jpg files under this folder instead of generated ones")
    ap.add_argument("--crop", type=int, default=CROP, help="with --folder: a centred square crop (0: the shorter side)")
    ap.add_argument("--crop-box", help="with --folder: TOP,LEFT,HEIGHT,WIDTH, the same box of every image")
    ap.add_argument("--size", type=int, default=SIZE, help="with --folder: the output side")
    args = ap.parse_args()
    crop, size = (tuple(int(v) for v in args.crop_box.split(",")) if args.crop_box else args.crop), args.size
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            paths = sorted(args.folder.rglob("*.jpg"))
            paths = paths[: args.images] if args.images else paths
        else:
            crop, size = CROP, SIZE
            folder = Path(args.keep_jpegs or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            paths = make_jpegs(folder, args.images)
        n = len(paths)
        result: dict[str, float | int | str] = {"images": n, "folder": str(args.folder or "generated"), "crop": str(crop), "size": size}
        rounds: dict[str, list[float]] = {"rust1": [], "rust2": [], "pillow": [], "pillow_draft": []}
        sides = {
            "rust1": lambda: decode_images(paths, crop=crop, size=size, threads=1),
            "rust2": lambda: decode_images(paths, crop=crop, size=size, threads=2),
            "pillow": lambda: pillow_decode(paths, draft=False, crop=crop, size=size),
            "pillow_draft": lambda: pillow_decode(paths, draft=True, crop=crop, size=size),
        }
        for fn in sides.values():
            fn()  # warm-up: the files in the page cache for every side
        for _ in range(args.repeats):  # the sides alternated, round after round
            for name, fn in sides.items():
                t = time.perf_counter()
                fn()
                rounds[name].append(time.perf_counter() - t)
        t_rust1, t_rust2, t_pil, t_draft = (min(rounds[k]) for k in ("rust1", "rust2", "pillow", "pillow_draft"))
        ours, ref = decode_images(paths, crop=crop, size=size), pillow_decode(paths, draft=False, crop=crop, size=size)
        result.update(
            decode_images_per_s_rust_1thread=n / t_rust1,
            decode_images_per_s_rust_2threads=n / t_rust2,
            decode_images_per_s_pillow=n / t_pil,
            decode_images_per_s_pillow_draft=n / t_draft,
            decode_speedup_vs_pillow=t_pil / t_rust1,
            decode_speedup_vs_pillow_draft=t_draft / t_rust1,
            decode_thread_scaling_2=t_rust1 / t_rust2,
            decode_mean_abs_diff_vs_pillow=float(np.abs(ours.astype(int) - ref.astype(int)).mean()),
        )

    x = np.random.RandomState(0).randint(0, 256, size=(256, 3, SIZE, SIZE)).astype(np.uint8)
    idx = np.arange(256, dtype=np.uint64)
    out = np.empty(x.shape, np.float32)
    rng = np.random.default_rng(0)
    t_deq = best_time(lambda: dequantize(x, seed=0, epoch=0, indices=idx, out=out), args.repeats * 5)
    t_deq1 = best_time(lambda: dequantize(x, seed=0, epoch=0, indices=idx, out=out, threads=1), args.repeats * 5)
    t_numpy = best_time(lambda: np.multiply(x + rng.random(x.shape, dtype=np.float32), np.float32(1 / 256), out=out), args.repeats * 5)
    import torch

    from vaeflow_cli.data.dequantization import dequantize_on_device

    xt, it = torch.from_numpy(x), torch.from_numpy(idx.astype(np.int64))
    t_torch = best_time(lambda: dequantize_on_device(xt, it, seed=0, epoch=0), args.repeats * 2)
    src = np.empty_like(out)
    t_copy = best_time(lambda: np.copyto(out, src), args.repeats * 5)
    gb = out.nbytes / 1e9
    result.update(
        dequantize_gb_per_s_rust=gb / t_deq,  # float32 output bytes written per second
        dequantize_gb_per_s_rust_1thread=gb / t_deq1,
        dequantize_gb_per_s_numpy=gb / t_numpy,
        dequantize_speedup_vs_numpy=t_numpy / t_deq,
        dequantize_gb_per_s_torch_cpu=gb / t_torch,  # train.dequantize = "device" when the device is the CPU
        memcpy_gb_per_s=gb / t_copy,
        dequantize_fraction_of_memcpy=t_copy / t_deq,
    )
    if torch.cuda.is_available():  # where dequantization wins: host (Rust, pinned, float32 copy) or GPU (uint8 copy)
        pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        pinned_u8 = torch.from_numpy(x).pin_memory()
        it_gpu = it.cuda()

        def host_path():
            dequantize(x, seed=0, epoch=0, indices=idx, out=pinned.numpy())
            pinned.to("cuda", non_blocking=True)
            torch.cuda.synchronize()

        def device_path():
            dequantize_on_device(pinned_u8.to("cuda", non_blocking=True), it_gpu, seed=0, epoch=0)
            torch.cuda.synchronize()

        t_host, t_dev = best_time(host_path, args.repeats * 5), best_time(device_path, args.repeats * 5)
        result.update(
            cuda_device=torch.cuda.get_device_name(),
            dequantize_host_to_cuda_ms=1e3 * t_host,
            dequantize_on_cuda_ms=1e3 * t_dev,
            dequantize_on_cuda_speedup=t_host / t_dev,
        )
    # the full loader on a cached (memory-mapped) uint8 dataset, 64x64 batches of 256, one epoch
    from vaeflow_cli.data.loader import BatchLoader

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.npy"
        np.save(cache, np.random.RandomState(1).randint(0, 256, size=(8192, 3, SIZE, SIZE)).astype(np.uint8))
        mapped = np.load(cache, mmap_mode="r")
        loader = BatchLoader(mapped, batch_size=256, seed=0)
        t_loader = best_time(lambda: sum(len(i) for i, _ in loader.epoch(0)), args.repeats)

        def numpy_epoch():  # the obvious alternative: index, then numpy noise, on the main thread
            order = np.random.default_rng(0).permutation(len(mapped))
            for i in range(0, len(order), 256):
                xb = mapped[np.sort(order[i : i + 256])]
                (xb + rng.random(xb.shape, dtype=np.float32)) * np.float32(1 / 256)

        t_np_loader = best_time(numpy_epoch, args.repeats)
    result.update(
        loader_images_per_s=len(mapped) / t_loader,
        loader_images_per_s_numpy=len(mapped) / t_np_loader,
        loader_speedup_vs_numpy=t_np_loader / t_loader,
    )
    for k, v in result.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}", file=sys.stderr)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
