#!/usr/bin/env bash
# colhead on one GPU, in a few minutes: prints images/s and ratios.
#
#  1. the column from pre-decoded tensors: ResNet-50 (random weights, a local file made here, no
#     network) at fp32, bf16 AMP, bf16 + channels_last, and optionally torch.compile'd (its compile
#     time is printed); colhead's Embedder on uint8 batches already on the GPU;
#  2. generated 2000x1500 photo-like JPEGs: decode ceilings (CPU: colhead's decode with and without
#     draft, all cores; GPU: torchvision.io.decode_jpeg(device="cuda"), batched);
#  3. the same column and JPEGs: (a) the usual way (PIL full decode, torchvision transforms,
#     DataLoader batch 32, fp32 forward), (b) colhead.extract with its defaults (AMP bf16,
#     channels_last, draft decoding, all cores but one decoding) and with the old 2 workers,
#     (c) batched GPU JPEG decode + resize on the GPU + bf16 forward, (d) colhead.extract with
#     --decode gpu (its CUDA default since issue 14: workers read bytes, nvJPEG decodes each
#     batch, resize + crop + normalise on the GPU) side by side with (b) --decode cpu (today's
#     colhead), and with --compile when COMPILE=1. Every row builds its model inside its timer
#     (as colhead.extract does), each row runs once untimed first (warm-up: files in the page
#     cache, CUDA/nvjpeg initialised), then the rows interleave.
#     Target (issue 14): (d) >= 3x (b), colhead from JPEGs on the same machine.
#
#   bash bench/gpu.sh                          # ~2-4 minutes on one H100 with 16 cores
#   N_JPEG=512 COMPILE=0 bash bench/gpu.sh     # more images, no torch.compile
#   QUICK=1 bash bench/gpu.sh                  # a dry run (also runs on a CPU-only machine)
#
# Needs torch, torchvision, timm, h5py, scikit-learn, pillow, tqdm (no colhead install: the
# repository root is made importable as `colhead` through a symlink).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PKG="$(mktemp -d)"
ln -s "$ROOT" "$PKG/colhead"
export PYTHONPATH="$PKG:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"
export COLHEAD_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "no nvidia-smi"
exec "$PY" - <<'PYEOF'
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torchvision

import _common as C

QUICK = os.environ.get("QUICK") == "1"
N_JPEG = int(os.environ.get("N_JPEG", 16 if QUICK else 512))
COMPILE = os.environ.get("COMPILE", "0" if QUICK else "1") == "1"
BATCH = int(os.environ.get("BATCH", 8 if QUICK else 256))
ITERS = 2 if QUICK else 20
CORES = len(os.sched_getaffinity(0))
cuda = torch.cuda.is_available()
dev = torch.device("cuda" if cuda else "cpu")
print(
    f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
    f"{torch.cuda.get_device_name() if cuda else 'no GPU (dry run)'}, {CORES} cores"
)
tmp = Path(tempfile.mkdtemp(prefix="colhead-gpu-"))
torch.manual_seed(0)
weights = tmp / "resnet50-random.pth"
torch.save(torchvision.models.resnet50().state_dict(), weights)
COLUMN = "tv/resnet50"


def sync():
    if cuda:
        torch.cuda.synchronize()


# -- 1. the column from pre-decoded tensors ------------------------------------------------------
def predecoded(model, amp: bool, channels_last: bool) -> float:
    x = torch.randn(BATCH, 3, 224, 224, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), ctx:
        for _ in range(3):
            model(x)
        sync()
        t = time.perf_counter()
        for _ in range(ITERS):
            model(x)
        sync()
    return BATCH * ITERS / (time.perf_counter() - t)


def column_rates():
    m = torchvision.models.resnet50().eval().to(dev)
    r = {"fp32": predecoded(m, False, False), "bf16 AMP": predecoded(m, True, False)}
    m = m.to(memory_format=torch.channels_last)
    r["bf16 AMP + channels_last"] = predecoded(m, True, True)
    base = r["fp32"]
    print(f"1. ResNet-50 from pre-decoded tensors (batch {BATCH}, {ITERS} iterations):")
    for k, v in r.items():
        print(f"   {k:<28} {v:9.0f} img/s   x{v / base:.2f} vs fp32")
    if COMPILE:
        script = tmp / "compiled.py"
        script.write_text(
            "import sys, time, torch, torchvision\n"
            "B, I = int(sys.argv[1]), int(sys.argv[2])\n"
            "m = torchvision.models.resnet50().eval().cuda().to(memory_format=torch.channels_last)\n"
            "x = torch.randn(B, 3, 224, 224, device='cuda').contiguous("
            "memory_format=torch.channels_last)\n"
            "t = time.perf_counter(); cm = torch.compile(m)\n"
            "with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):\n"
            "    cm(x); torch.cuda.synchronize(); c = time.perf_counter() - t\n"
            "    for _ in range(3): cm(x)\n"
            "    torch.cuda.synchronize(); t = time.perf_counter()\n"
            "    for _ in range(I): cm(x)\n"
            "    torch.cuda.synchronize()\n"
            "print(f'{B * I / (time.perf_counter() - t):.0f} {c:.1f}')\n"
        )
        try:
            out = subprocess.run(
                [sys.executable, str(script), str(BATCH), str(ITERS)],
                capture_output=True, text=True, timeout=int(os.environ.get("COMPILE_CAP", 150)),
            )
            rate, secs = out.stdout.split()[-2:]
            rate = float(rate)
            r["bf16 + channels_last + compile"] = rate
            print(
                f"   {'+ torch.compile':<28} {rate:9.0f} img/s   x{rate / base:.2f} vs fp32, "
                f"x{rate / r['bf16 AMP + channels_last']:.2f} vs eager; compile {secs} s "
                f"(pays off after ~{float(secs) * rate:.0f} images)"
            )
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"   torch.compile: not measured ({type(e).__name__}: {str(e)[-300:]})")
    from colhead.extract._embedder import Embedder

    emb = Embedder(COLUMN, weights=weights)
    x8 = torch.randint(0, 256, (BATCH, 224, 224, 3), dtype=torch.uint8, device=dev)
    for _ in range(3):
        emb.forward(x8)
    sync()
    t = time.perf_counter()
    for _ in range(ITERS):
        emb.forward(x8)  # includes normalisation and the copy of the vectors back to the host
    e = BATCH * ITERS / (time.perf_counter() - t)
    print(
        f"   colhead Embedder ({emb.precision}, channels_last={emb.channels_last}, uint8 in, "
        f"numpy out) {e:9.0f} img/s   x{e / base:.2f} vs fp32"
    )
    r["embedder"] = e
    return r


# -- 2. JPEGs and decode ceilings ----------------------------------------------------------------
def _write(i):
    from PIL import Image

    p = tmp / "jpegs" / f"c{i % 2}" / f"img{i:04d}.jpg"
    Image.fromarray(C.photo_like(i)).save(p, "JPEG", quality=90)
    return str(p)


def _decode_share(args):
    paths, draft = args
    from colhead.extract import get_column
    from colhead.extract._images import decode

    pre = get_column(COLUMN).preprocess
    for p in paths:
        decode(Path(p).read_bytes(), pre, draft=draft)
    return len(paths)


def cpu_decode_ceiling(paths, draft: bool) -> float:
    shares = [(paths[i::CORES], draft) for i in range(CORES)]
    with Pool(CORES) as pool:
        t = time.perf_counter()
        n = sum(pool.map(_decode_share, shares))
        return n / (time.perf_counter() - t)


def gpu_decode_batches(paths, batch: int = 64, model=None):
    """torchvision.io.decode_jpeg on the GPU, batched; resize/crop/normalise on the GPU."""
    from torchvision.transforms.v2 import functional as F

    from colhead.extract import get_column

    pre = get_column(COLUMN).preprocess
    mean = torch.tensor(pre.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre.std, device=dev).view(1, 3, 1, 1) * 255
    interp = F.InterpolationMode.BILINEAR if pre.interpolation == "bilinear" else (
        F.InterpolationMode.BICUBIC
    )
    out = []
    for s in range(0, len(paths), batch):
        datas = [torchvision.io.read_file(p) for p in paths[s : s + batch]]
        imgs = torchvision.io.decode_jpeg(datas, device=dev.type)
        x = torch.stack(
            [F.center_crop(F.resize(i, pre.resize, interp, antialias=True), pre.crop) for i in imgs]
        )
        if model is not None:
            x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
                out.append(model(x).float().cpu().numpy())
    sync()
    return np.concatenate(out) if out else None


# -- 3. (a) / (b) / (c) ----------------------------------------------------------------------------
def usual(ds, workers):
    """(a): the tutorial way on a GPU: PIL, torchvision transforms, DataLoader batch 32, fp32."""
    from colhead.extract import get_column

    spec = get_column(COLUMN)
    model, _, _ = spec.build(weights)
    model = model.eval().to(dev)
    loader = torch.utils.data.DataLoader(
        C.UsualImages(ds.paths, range(len(ds)), spec.preprocess),
        batch_size=32, num_workers=workers, pin_memory=cuda,
    )
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(model(x.to(dev, non_blocking=True)).cpu().numpy())
    return np.concatenate(out)


def gpu_path(paths):
    """(c): GPU decode + resize + bf16 forward; builds its model here, like (a) and (b)."""
    from colhead.extract import get_column

    model, _, _ = get_column(COLUMN).build(weights)
    model = model.eval().to(dev).to(memory_format=torch.channels_last)
    return gpu_decode_batches(paths, model=model)


def ours(ds, out, **kw):
    import colhead
    from colhead.cache import open_cache

    if out.exists():
        out.unlink()
    res = colhead.extract(COLUMN, ds, out=out, weights=weights, progress=False, **kw)
    cache = open_cache(out)
    pos = {i: k for k, i in enumerate(cache.ids)}
    return cache.features[[pos[i] for i in ds.ids]], res


def main():
    t_all = time.perf_counter()
    rates = column_rates()
    (tmp / "jpegs" / "c0").mkdir(parents=True)
    (tmp / "jpegs" / "c1").mkdir(parents=True)
    with Pool(CORES) as pool:
        pool.map(_write, range(N_JPEG))
    ds = C.folder_dataset(tmp / "jpegs")
    paths = [str(p) for p in ds.paths]
    n = len(paths)
    print(f"2. {n} JPEGs 2000x1500, decode + resize + crop ceilings:")
    d_draft = cpu_decode_ceiling(paths, True)
    d_full = cpu_decode_ceiling(paths, False)
    gpu_decode_batches(paths[:64])  # warm-up (nvjpeg handles, kernels)
    t = time.perf_counter()
    gpu_decode_batches(paths)
    d_gpu = n / (time.perf_counter() - t)
    print(
        f"   CPU, {CORES} processes: draft {d_draft:.0f} img/s, full decode {d_full:.0f} img/s "
        f"(draft x{d_draft / d_full:.1f})\n"
        f"   GPU decode_jpeg (batches of 64, resize on the GPU): {d_gpu:.0f} img/s "
        f"(x{d_gpu / d_draft:.1f} the CPU draft ceiling)"
    )
    workers = max(2, min(CORES - 1, 16))
    runs = C.interleaved(
        {
            "a": lambda: usual(ds, workers),
            "b": lambda: ours(ds, tmp / "b.h5", decode="cpu"),
            "b2": lambda: ours(ds, tmp / "b2.h5", workers=2, decode="cpu"),
            "c": lambda: gpu_path(paths),
            "d": lambda: ours(ds, tmp / "d.h5", decode="gpu"),
            **({"dc": lambda: ours(ds, tmp / "dc.h5", decode="gpu", compile=True)} if COMPILE
               else {}),
        },
        1 if QUICK else 2,
        warmup=True,
    )
    fa, fc = runs["a"]["result"], runs["c"]["result"]
    fb, res = runs["b"]["result"]
    fd, res_d = runs["d"]["result"]
    ra, rb, rb2, rc, rd = (n / runs[k]["median"] for k in ("a", "b", "b2", "c", "d"))
    loop = n / (res.read_s + res.column_s + res.write_s)
    # random weights make every vector point roughly the same way: compare them centred
    mu = fa.mean(0)
    cb, cc = C.cosine_rows(fb - mu, fa - mu), C.cosine_rows(fc - mu, fa - mu)
    cd = C.cosine_rows(fd - mu, fb - mu)
    bound = "decode-bound" if loop / d_draft > loop / rates["embedder"] else "column-bound"
    print(
        f"3. {COLUMN} (random weights) over the {n} JPEGs, end to end incl. model build "
        f"(median of {len(runs['a']['times'])} after one warm-up run each):\n"
        f"   (a) usual way, fp32, PIL full decode, {workers} workers  {ra:8.0f} img/s\n"
        f"   (b) colhead.extract --decode cpu ({res.precision}, draft, {workers} workers) "
        f"{rb:8.0f} img/s   (loop only {loop:.0f} img/s: read {res.read_s:.1f} s, column "
        f"{res.column_s:.1f} s, write {res.write_s:.2f} s)\n"
        f"   (b) with 2 workers (the old default)                     {rb2:8.0f} img/s\n"
        f"   (c) GPU decode_jpeg + GPU resize + bf16, one process       {rc:8.0f} img/s\n"
        f"   (d) colhead.extract --decode gpu (the CUDA default)        {rd:8.0f} img/s   "
        f"(loop: read+decode {res_d.read_s:.1f} s, column {res_d.column_s:.1f} s)\n"
        + (
            f"   (d) + --compile (compile time inside the timer)            "
            f"{n / runs['dc']['median']:8.0f} img/s\n"
            if COMPILE
            else ""
        )
        + f"   GPU decode vs CPU decode, colhead from JPEGs: (d)/(b) {rd / rb:.2f}x "
        f"(target >= 3x: {'holds' if rd / rb >= 3 else 'misses'}); centred cosine (d) to (b) "
        f"mean {cd.mean():.4f} min {cd.min():.4f}\n"
        f"   ratios: (b)/(a) {rb / ra:.2f}x, (c)/(a) {rc / ra:.2f}x, (b) {workers} vs 2 workers "
        f"{rb / rb2:.2f}x\n"
        f"   centred cosine to (a) fp32: (b) mean {cb.mean():.4f} min {cb.min():.4f}; "
        f"(c) mean {cc.mean():.4f} min {cc.min():.4f}\n"
        f"   limits: column alone {rates['embedder']:.0f} img/s (Embedder) vs CPU draft-decode "
        f"ceiling {d_draft:.0f} img/s: (b) loop reaches {loop / d_draft:.0%} of the decode "
        f"ceiling and {loop / rates['embedder']:.1%} of the column's rate -> {bound}"
    )
    print(f"total {time.perf_counter() - t_all:.0f} s")


main()
PYEOF
