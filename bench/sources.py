"""Extraction from tar shards and parquet vs the same images in a folder (issue 11).

The same N photo-like JPEGs (two classes) are written three ways: a class folder, webdataset
tar shards (``KEY.jpg`` + ``KEY.cls``) and one parquet file of Hugging Face image structs (row
groups of 50). Each source is extracted whole by ``colhead.extract`` (parsing the spec included)
into a fresh cache: the column is ``tiny`` at fp32 with decoding in-process by default, so the
figures show what the source costs around decoding, not the column. One untimed warm-up each,
then rounds in alternating order (a b c, c b a, a b c ...); medians of the rounds with the
spread (min-max), and each source's rate as a ratio of the folder's.

    python bench/sources.py                      # ~1 minute on 2 cores
    python bench/sources.py --n 500 --rounds 5 --column efficientnet_lite0 --workers 2
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def write_sources(root: Path, n: int, size: tuple[int, int], shards: int) -> dict[str, str]:
    """The same images as a folder, tar shards and a parquet file; returns their specs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = C.write_jpegs(root / "folder", n, size=size)
    per = -(-n // shards)
    for k in range(shards):
        with tarfile.open(root / f"shard-{k:03d}.tar", "w") as tf:
            for p in paths[k * per : (k + 1) * per]:
                for name, data in (
                    (f"{p.stem}.jpg", p.read_bytes()),
                    (f"{p.stem}.cls", p.parent.name.encode()),
                ):
                    info = tarfile.TarInfo(f"{p.parent.name}/{name}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    image = pa.array(
        [{"bytes": p.read_bytes(), "path": p.name} for p in paths],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": image, "label": [p.parent.name for p in paths]})
    pq.write_table(table, root / "images.parquet", row_group_size=50)
    return {
        "folder": f"folder:{root / 'folder'}",
        "wds": f"wds:{root}/shard-{{000..{shards - 1:03d}}}.tar",
        "parquet": f"parquet:{root / 'images.parquet'}",
    }


def run_once(spec: str, out: Path, args) -> float:
    import colhead

    out.unlink(missing_ok=True)
    t = time.perf_counter()
    r = colhead.extract(
        args.column,
        spec,
        out=out,
        precision=args.precision,
        workers=args.workers,
        device="cpu",
        progress=False,
    )
    s = time.perf_counter() - t
    assert r.written == args.n and r.skipped_now == 0, r.summary()
    return s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="images (default 200)")
    p.add_argument("--size", default="320x240", help="image size WxH (default 320x240)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--column", default="tiny")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = write_sources(root, args.n, (w, h), args.shards)
        names = list(specs)
        times: dict[str, list[float]] = {k: [] for k in names}
        for k in names:  # warm-up: imports, the column, the page cache
            run_once(specs[k], root / f"{k}.h5", args)
        for r in range(args.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                times[k].append(run_once(specs[k], root / f"{k}.h5", args))
    print(
        f"{args.n} JPEGs {w}x{h}, column {args.column} {args.precision}, workers {args.workers}, "
        f"{args.rounds} rounds (median, min-max)"
    )
    base = args.n / statistics.median(times["folder"])
    for k in names:
        rates = [args.n / s for s in times[k]]
        med = statistics.median(rates)
        print(
            f"  {k:<8} {med:8.1f} img/s  ({min(rates):.1f}-{max(rates):.1f})   "
            f"x{med / base:.2f} of folder"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
