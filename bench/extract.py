"""Extraction speed, whole process, side by side: the usual loop, a tuned loop, timm, colhead.

On the same camera-like JPEGs (sklearn's sample photos cut and resized to a mix of 640x480,
1600x1200 and 4000x3000), each row is one whole process, timed from launch to exit (imports and
the model build included), so start-up counts as a user feels it:

  usual    the loop as users write it: PIL ``Image.open().convert("RGB")``, torchvision Resize +
           CenterCrop + ToTensor + Normalize, DataLoader(batch 32, 2 workers), fp32 forward of
           the same timm model, torch's default threads;
  tuned    the same loop set for the cores: 1 torch thread + 2 decode workers (on 2 cores this
           beat 2 threads + 2 workers, whose forward stalls whenever a worker preempts a thread);
  timm     timm's own ``inference.py`` (bf16 autocast, channels_last), from a fetched copy of the
           timm repository (``--timm-repo`` or ``$TIMM_REPO``; skipped with a message when absent);
  colhead  ``colhead extract`` with every backend (``--backend torch`` and ``openvino``), defaults
           otherwise, into a fresh cache each run (the converted OpenVINO model is reused, as a
           user's second run reuses it; the conversion is timed apart, in the start-up section).

Every row gets an untimed warm-up run, then rounds in alternating order (a b c ... c b a), and
the median of the rounds is reported with the spread (min-max). Then: the cosine of each row's
vectors to the usual fp32 vectors, and a linear probe (LogRegHead) on elpv with the vectors of
each backend against fp32; and the start-up: what ``colhead extract`` spends before the first
image, for 10 images.

    python bench/extract.py              # ~5 minutes on 2 cores
    python bench/extract.py --quick      # ~1.5 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve()
BACKENDS = ("torch", "openvino")


# -- rows: each runs as its own process ---------------------------------------------------------
def row_usual(data: Path, save: Path, threads: int | None) -> None:
    """The usual loop (threads=None: torch's default, as users leave it)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    ds = C.folder_dataset(data)
    np.save(save, C.usual_extract(ds, workers=2))


def timm_checkpoint(path: Path) -> Path:
    """The default column's weights as a timm checkpoint (with classifier) for inference.py."""
    import torch

    from colhead.extract._columns import build_efficientnet_lite

    if not path.exists():
        model, _, _ = build_efficientnet_lite(0, keep_classifier=True)
        torch.save(model.state_dict(), path)
    return path


def commands(row: str, data: Path, out: Path, timm_repo: Path | None, ckpt: Path) -> list[str]:
    py = sys.executable
    if row in ("usual", "tuned"):
        return [py, str(HERE), "--row", row, "--data", str(data), "--save", str(out) + ".npy"]
    if row == "timm":
        return [py, str(timm_repo / "inference.py"), str(data), "--model", "tf_efficientnet_lite0",
                "--checkpoint", str(ckpt), "--device", "cpu", "--amp", "--amp-dtype", "bfloat16",
                "--channels-last", "-b", "32", "-j", "2", "--results-dir", str(out.parent),
                "--results-file", out.name + ".csv", "--log-freq", "1000"]  # fmt: skip
    backend = row.split("-", 1)[1]
    return [py, "-m", "colhead", "extract", "--data", f"folder:{data}", "--out", str(out) + ".h5",
            "--backend", backend, "--no-progress"]  # fmt: skip


def run_once(cmd: list[str], out: Path) -> float:
    for suffix in (".h5", ".npy", ".csv"):
        Path(str(out) + suffix).unlink(missing_ok=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-2000:]}")
    return dt


def vectors(row: str, out: Path, ds) -> np.ndarray | None:
    if row in ("usual", "tuned"):
        return np.load(str(out) + ".npy")
    if row.startswith("colhead"):
        from colhead.cache import open_cache

        c = open_cache(str(out) + ".h5", require_complete=True)
        pos = {id_: i for i, id_ in enumerate(c.ids)}
        return c.features[[pos[i] for i in ds.ids]]
    return None  # timm's inference.py writes class scores, not vectors


def side_by_side(rows, data: Path, tmp: Path, rounds: int, timm_repo, ckpt) -> dict:
    cmds = {r: commands(r, data, tmp / r, timm_repo, ckpt) for r in rows}
    times: dict[str, list[float]] = {r: [] for r in rows}
    for r in rows:  # warm-up: page cache, .pyc files, the converted model
        run_once(cmds[r], tmp / r)
    for k in range(rounds):
        for r in rows if k % 2 == 0 else rows[::-1]:
            times[r].append(run_once(cmds[r], tmp / r))
    return times


def report(times: dict, n: int, ds, tmp: Path) -> dict[str, float]:
    med = {r: statistics.median(t) for r, t in times.items()}
    ref = vectors("usual", tmp / "usual", ds)
    print(f"{'row':<18}{'median s':>9}{'spread s':>14}{'img/s':>8}{'vs usual':>9}{'vs tuned':>9}"
          f"{'vs timm':>8}  cosine to fp32 (mean / min)")  # fmt: skip
    for r, t in times.items():
        v = vectors(r, tmp / r, ds)
        cos = C.cosine_rows(v, ref) if v is not None else None
        print(
            f"{r:<18}{med[r]:9.2f}{f'{min(t):.2f}-{max(t):.2f}':>14}{n / med[r]:8.1f}"
            f"{med['usual'] / med[r]:8.2f}x{med['tuned'] / med[r]:8.2f}x"
            + (f"{med['timm'] / med[r]:7.2f}x" if "timm" in med else f"{'-':>8}")
            + (f"  {cos.mean():.5f} / {cos.min():.5f}" if cos is not None else "  -")
        )
    return med


# -- start-up ----------------------------------------------------------------------------------
STARTUP = r"""
import sys, time
t0 = time.perf_counter()
import colhead.extract as E
t1 = time.perf_counter()
import torch
t2 = time.perf_counter()
emb = E.Embedder(device="cpu", backend=sys.argv[1], threads=int(sys.argv[2]))
t3 = time.perf_counter()
import numpy as np
emb.forward(np.zeros((8, 224, 224, 3), np.uint8))
t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f} {t4 - t3:.2f}")
"""


def startup(data10: Path, tmp: Path, rounds: int) -> None:
    """Whole ``colhead extract`` on 10 images per backend, and where the time before the first
    image goes (import colhead.extract, import torch, the column's build, a first batch)."""
    py = sys.executable
    print("\nstart-up: `colhead extract` of 10 camera JPEGs, whole process (median of rounds)")
    for b in BACKENDS:
        cmd = [py, "-m", "colhead", "extract", "--data", f"folder:{data10}", "--out",
               str(tmp / f"s-{b}") + ".h5", "--backend", b, "--no-progress"]  # fmt: skip
        run_once(cmd, tmp / f"s-{b}")
        t = [run_once(cmd, tmp / f"s-{b}") for _ in range(rounds)]
        parts = []
        for _ in range(rounds):
            r = subprocess.run([py, "-c", STARTUP, b, "1"], capture_output=True, text=True)
            parts.append([float(v) for v in r.stdout.split()])
        imp, tor, build, first = (statistics.median(p[i] for p in parts) for i in range(4))
        print(
            f"  {b:<9} {statistics.median(t):5.2f} s whole (spread {min(t):.2f}-{max(t):.2f}); "
            f"before the first image: import colhead.extract {imp:.2f} s, import torch {tor:.2f}"
            f" s, column build {build:.2f} s, first batch of 8 {first:.2f} s"
        )
    if "openvino" in BACKENDS:  # the one-time conversion, into an empty cache folder
        env = {**os.environ, "COLHEAD_CACHE": str(tmp / "fresh-cache")}
        r = subprocess.run([py, "-c", STARTUP, "openvino", "1"], capture_output=True, text=True,
                           env=env)  # fmt: skip
        print(f"  openvino, first use (converts the column once): build {r.stdout.split()[2]} s")


# -- probe ---------------------------------------------------------------------------------------
def probe(n_images: int | None, folds: int = 5, repeats: int = 2, save: Path | None = None):
    """Linear probes on elpv: torch fp32 vectors against each backend's default precision.

    With a few hundred test images one image moves the accuracy by 0.5 points, more than the
    effect measured. So the probe pools elpv's train and test images (``n_images`` of them, all
    by default) and runs ``repeats`` x stratified ``folds``-fold cross-validation: every image is
    a test image ``repeats`` times, and each backend is scored on the same folds as fp32 (a
    paired difference, with its standard error over the folds). Two probes: the comparison's
    (``make_protocol_head("logreg", ...)``: CL2N vectors, C chosen on a hold-out of the training
    fold) and a plain one (standardised vectors, C = 1), whose fits are less stable.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    from colhead.extract import Embedder
    from colhead.heads import LogRegHead, make_protocol_head

    tr, te = C.elpv_subset("train", None), C.elpv_subset("test", None)
    paths, y = list(tr.paths) + list(te.paths), np.array(list(tr.labels) + list(te.labels))
    y = np.unique(y, return_inverse=True)[1]  # class codes 0..k-1, whatever the labels are
    if n_images is not None and n_images < len(y):
        keep = np.sort(np.random.default_rng(0).choice(len(y), n_images, replace=False))
        paths, y = [paths[i] for i in keep], y[keep]
    splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
                  .split(np.zeros(len(y)), y))  # fmt: skip
    per_class = int(np.bincount(y[splits[0][0]]).min())
    probes = {
        "protocol": lambda: make_protocol_head("logreg", per_class, seed=0),
        "C=1 std.": lambda: LogRegHead(C=1.0, random_state=0),
    }
    runs = {"torch fp32": dict(precision="fp32", backend="torch")}
    runs.update({f"{b} auto": dict(precision="auto", backend=b) for b in BACKENDS})
    if "openvino" in BACKENDS:
        runs["openvino fp32"] = dict(precision="fp32", backend="openvino")
    feats, preds = {}, {}
    for name, kw in runs.items():
        emb = Embedder(device="cpu", **kw)
        feats[name] = emb.embed(paths)[0]
        cos = C.cosine_rows(feats[name], feats["torch fp32"])
        print(f"  {name:<14} ({emb.backend} {emb.precision}): cosine to fp32 {cos.mean():.5f} / "
              f"{cos.min():.5f} (mean / min)")  # fmt: skip
        for probe_name, make in probes.items():
            accs, preds[name, probe_name] = [], []
            for i_tr, i_te in splits:
                head = make().fit(feats[name][i_tr], y[i_tr])
                preds[name, probe_name].append(head.predict(feats[name][i_te]))
                accs.append(100 * np.mean(preds[name, probe_name][-1] == y[i_te]))
            ref = [100 * np.mean(p == y[i_te])
                   for p, (_, i_te) in zip(preds["torch fp32", probe_name], splits)]  # fmt: skip
            d = np.array(accs) - np.array(ref)
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            pairs = zip(preds[name, probe_name], preds["torch fp32", probe_name])
            flips = sum(int(np.sum(a != b)) for a, b in pairs)
            print(f"    probe {probe_name:<9} {np.mean(accs):6.2f}%  vs fp32 {d.mean():+5.2f} ± "
                  f"{se:.2f} points (mean ± s.e. over folds); predictions unlike fp32's: "
                  f"{flips} of {repeats * len(y)}")  # fmt: skip
    if save is not None:
        np.savez(save, y=y, **{k.replace(" ", "_"): v for k, v in feats.items()})
    print(f"  (elpv defect: {len(y)} images, {repeats} x stratified {folds}-fold CV; one test "
          f"image = {100 * folds / len(y):.2f} points of one fold)")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and rounds")
    p.add_argument("--images", type=int, default=None, help="camera JPEGs (default 120; quick 40)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; quick 3)")
    p.add_argument("--timm-repo", default=os.environ.get("TIMM_REPO"), help="timm checkout")
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--probe-images", type=int, default=None,
                   help="elpv images of the probe (default: all 2,624; quick 600)")  # fmt: skip
    p.add_argument("--probe-only", action="store_true", help="only the probe")
    p.add_argument("--probe-save", type=Path, help="also save the probe's vectors (.npz)")
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:  # a child process: one row
        row_usual(Path(args.data), Path(args.save), threads=1 if args.row == "tuned" else None)
        return 0
    n = args.images or (40 if args.quick else 120)
    rounds = args.rounds or 3
    timm_repo = Path(args.timm_repo) if args.timm_repo else None
    rows = ["usual", "tuned"] + [f"colhead-{b}" for b in BACKENDS]
    print(f"machine: {C.machine()}\n{C.load_average()} (other jobs share these cores)")
    if timm_repo is not None and (timm_repo / "inference.py").is_file():
        rows.insert(2, "timm")
    else:
        print("timm row skipped: no timm checkout (pass --timm-repo DIR or set TIMM_REPO to a "
              "clone of github.com/huggingface/pytorch-image-models)")  # fmt: skip
    if not args.probe_only:
        with tempfile.TemporaryDirectory(prefix="colhead-bench-") as tmp:
            tmp = Path(tmp)
            C.write_camera_jpegs(tmp / "jpegs", n)
            ds = C.folder_dataset(tmp / "jpegs")
            ckpt = timm_checkpoint(tmp / "lite0-timm.pth") if "timm" in rows else tmp / "none"
            sizes = ", ".join(f"{w}x{h}" for w, h in C.CAMERA_SIZES)
            print(f"\n{n} camera-like JPEGs ({sizes} mixed 60/30/10), {rounds} rounds after a "
                  "warm-up, whole process per run")  # fmt: skip
            times = side_by_side(rows, tmp / "jpegs", tmp, rounds, timm_repo, ckpt)
            report(times, n, ds, tmp)
            C.write_camera_jpegs(tmp / "ten", 10)
            startup(tmp / "ten", tmp, rounds)
    if not args.no_probe:
        print("\nprobe: the backends' vectors against torch fp32")
        probe(args.probe_images or (600 if args.quick else None), save=args.probe_save)
    print(f"\n{C.load_average()} (at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
