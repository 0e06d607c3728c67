"""The OpenVINO CPU backend: the same column, converted once, run by OpenVINO's CPU plugin.

Measured on 2 cores (issue 14; ``bench/extract.py`` gives the current figures), OpenVINO ran
EfficientNet-Lite0 2-4x faster than PyTorch eager with bf16 autocast, at the same cosine to
fp32. What it takes:

- ``openvino.convert_model`` traces the torch column wrapped so that it takes the decoded uint8
  images as they are (N, H, W, 3) and normalises inside the graph, where OpenVINO fuses it.
- The converted model (OpenVINO IR) is kept on disk under ``<cache dir>/openvino/<key>/``, keyed
  by the column identity (name, weights sha256, preprocessing) and the OpenVINO version, with a
  small ``meta.json`` (weights hash, dim). Conversion takes tens of seconds; a later start reads
  the IR and skips the torch model altogether when the column can name its weights file without
  building (``ColumnSpec.locate``). The compiled model is kept beside it too, one blob per
  precision hint and thread setting (importing it is faster than compiling again).
- ``compile_model(..., "CPU", {"INFERENCE_PRECISION_HINT": "bf16"|"f32", "PERFORMANCE_HINT":
  "THROUGHPUT"})`` and an ``AsyncInferQueue`` over fixed micro-batches: each slice of a batch is
  a fixed function of the batch, so a resumed run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "torch", "openvino")
MICRO_BATCH = 8  # images per infer request (as the torch CPU path's micro-batch)
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}
# Bump when ``convert`` changes what it builds: the key of every converted model on disk holds
# it, so an IR made by an older wrapper is never reused.
CONVERT_VERSION = 1
# The code that decides what network a column name builds. Its digest is in the key too: a
# change to a builder (e.g. which stages ``:stages`` pools) once kept serving an IR converted by
# the old code, with other dimensions, until the cache folder was cleared by hand.
_CODE_FILES = ("_registry.py", "_columns.py", "_external.py", "_stages.py", "_openvino.py")


def available() -> bool:
    """True when OpenVINO is installed (cheap: it is imported when a column is loaded)."""
    return importlib.util.find_spec("openvino") is not None


def check_backend(backend: str, device) -> str:
    """Validate ``backend`` for a resolved device; "auto" -> openvino on CPUs where installed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError(f"--backend openvino runs on the CPU, not {device}; use --device cpu.")
        if not available():
            raise ValueError(
                "--backend openvino needs OpenVINO: pip install openvino (or use --backend torch)."
            )
        return backend
    if backend == "auto":
        return "openvino" if device.type == "cpu" and available() else "torch"
    return backend


def identity_precision(backend: str, precision: str) -> str:
    """The precision as the cache identity records it: torch keeps the plain name (old caches
    match), other backends prefix theirs, since their vectors differ in the last bits."""
    return precision if backend == "torch" else f"{backend}-{precision}"


def backend_of(identity_precision: str) -> str:
    """The backend that made a cache, read back from its identity's precision."""
    return identity_precision.split("-", 1)[0] if "-" in identity_precision else "torch"


def ir_dir(cache_dir: Path, column_identity: dict) -> Path:
    import openvino

    key = {
        "column": column_identity["column"],
        "weights_sha256": column_identity["weights_sha256"],
        "preprocess": column_identity["preprocess"],
        "openvino": openvino.__version__,
        "micro_batch": MICRO_BATCH,
        "convert": CONVERT_VERSION,
        "code": _code_digest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key["column"])
    return cache_dir / "openvino" / f"{safe}.{digest}"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    h = hashlib.sha256()
    for name in _CODE_FILES:
        path = Path(__file__).with_name(name)
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()[:16]


class OpenVINOColumn:
    """A column compiled by OpenVINO for the CPU: uint8 (N, H, W, 3) in, float32 (N, dim) out.

    Args:
        ir: folder holding ``model.xml``, or a converted model in memory.
        precision: "fp32" | "bf16" (the precision hint; bf16 where the CPU runs it natively).
        threads: OpenVINO's CPU threads (None: all it sees); streams follow from the hint.
    """

    def __init__(self, ir, *, precision: str, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if isinstance(ir, Path):
            self.compiled = _compile_cached(core, ir, config)
        else:
            self.compiled = core.compile_model(ir, "CPU", config)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self._out: list = []
        self.queue.set_callback(self._done)

    def _done(self, request, slot: int) -> None:
        self._out[slot] = request.get_output_tensor(0).data.copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.uint8)
        starts = range(0, len(x), MICRO_BATCH)
        self._out = [None] * len(starts)
        for slot, s in enumerate(starts):
            self.queue.start_async({0: x[s : s + MICRO_BATCH]}, slot)
        self.queue.wait_all()
        return np.concatenate(self._out).astype(np.float32, copy=False)


def _compile_cached(core, ir: Path, config: dict):
    """Compile the IR, or import the compiled model kept beside it for the same settings.

    Not OpenVINO's own ``CACHE_DIR``: with it on, a run of tests/test_extract.py (whose kill
    test SIGKILLs extractions) once gave NaN vectors afterwards, and a blob written in place can
    be cut short by a kill. Here a blob is written to a temporary name and renamed, so it is
    whole or absent.
    """
    key = "-".join(f"{k}={v}" for k, v in sorted(config.items()))
    blob = ir / f"compiled.{hashlib.sha256(key.encode()).hexdigest()[:12]}.blob"
    if blob.is_file():
        try:
            with open(blob, "rb") as f:
                return core.import_model(f.read(), "CPU", config)
        except Exception:  # an unreadable blob (other build of the plugin): compile again
            pass
    compiled = core.compile_model(str(ir / "model.xml"), "CPU", config)
    tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(compiled.export_model().getvalue())
        tmp.rename(blob)
    except (OSError, RuntimeError):
        tmp.unlink(missing_ok=True)
    return compiled


def convert(model, *, crop: int, mean, std):
    """A torch column (with its normalisation, on uint8 NHWC input) as an OpenVINO model."""
    import openvino as ov
    import torch

    class _UInt8Input(torch.nn.Module):
        def __init__(self, column):
            super().__init__()
            self.column = column
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

        def forward(self, x):
            return self.column((x.permute(0, 3, 1, 2).float() - self.mean) / self.std)

    example = torch.zeros(MICRO_BATCH, crop, crop, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        return ov.convert_model(_UInt8Input(model.float().eval()).eval(), example_input=example)


def save(ov_model, ir: Path, meta: dict) -> None:
    """Write the IR and its meta atomically; a cache folder that cannot be written is skipped
    (the next start converts again, which is slow but correct)."""
    import shutil

    import openvino as ov

    tmp = ir.with_name(f".{ir.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        tmp.rename(ir)  # atomic; another process that converted at once keeps its own copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(ir: Path) -> dict | None:
    """The meta of a converted column, None when it is not (completely) there."""
    try:
        if (ir / "model.xml").is_file() and (ir / "model.bin").is_file():
            return json.loads((ir / "meta.json").read_text())
    except (OSError, ValueError):
        pass
    return None


class BackendError(RuntimeError):
    """OpenVINO could not convert or compile the column (``auto`` then falls back to torch).

    Errors of the column itself (no weights, a bad weights file) are not this: they propagate
    as they would on torch, without a fallback attempt.
    """


def load(spec, weights, *, precision: str, threads: int | None, cache_dir: Path):
    """The column on OpenVINO: (OpenVINOColumn, weights file, weights sha256, dim).

    Reuses the converted model from ``cache_dir`` when there is one; when the spec can name its
    weights file (``spec.locate``) the torch model is then never built at all.
    """
    from ._columns import sha256_file

    pre = spec.preprocess.to_dict()
    located = spec.locate(weights) if spec.locate is not None else None
    if located is not None:
        sha = sha256_file(located)
        ir = _openvino_call(ir_dir, cache_dir, {"column": spec.name, "weights_sha256": sha,
                                                "preprocess": pre})  # fmt: skip
        meta = read_meta(ir)
        if meta is not None:
            col = _openvino_call(OpenVINOColumn, ir, precision=precision, threads=threads)
            return col, located, sha, int(meta["dim"])
    model, wfile, sha = spec.build(weights)
    col, dim = _openvino_call(_convert_and_compile, spec, model, sha, precision, threads, cache_dir)
    return col, wfile, sha, dim


def _openvino_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # anything OpenVINO raises (its own types vary by version)
        raise BackendError(f"{type(e).__name__}: {str(e)[:200]}") from e


def _convert_and_compile(spec, model, sha, precision, threads, cache_dir):
    pre = spec.preprocess
    ir = ir_dir(
        cache_dir, {"column": spec.name, "weights_sha256": sha, "preprocess": pre.to_dict()}
    )
    meta = read_meta(ir)
    if meta is None:
        t = time.perf_counter()
        ov_model = convert(model, crop=pre.crop, mean=pre.mean, std=pre.std)
        dim = int(ov_model.outputs[0].get_partial_shape()[1].get_length())
        meta = {"column": spec.name, "weights_sha256": sha, "dim": dim,
                "convert_s": round(time.perf_counter() - t, 2)}  # fmt: skip
        save(ov_model, ir, meta)
        if read_meta(ir) is None:  # not saved (read-only cache folder): compile from memory
            return OpenVINOColumn(ov_model, precision=precision, threads=threads), dim
    return OpenVINOColumn(ir, precision=precision, threads=threads), int(meta["dim"])
