"""A column held in memory: images in, vectors out. Shared by the extractor, predict and serve."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from .._device import autocast, resolve_device, resolve_precision
from ._gpu_decode import decode_batch, resolve_decode
from ._images import BadImage, decode, from_array
from ._openvino import BackendError, check_backend, identity_precision
from ._registry import get_column
from ._tuner import ThreadTuner

# On the CPU the column runs best over small slices of a batch: EfficientNet-Lite0's activations
# for 8 images stay in cache, for 64 they do not. The slicing is a fixed function of the batch, so
# a resumed extraction still computes exactly what an uninterrupted one does.
CPU_MICRO_BATCH = 8


class Embedder:
    """Load a column once (frozen, eval mode) and turn batches of images into vectors.

    Args:
        column: column name (see ``colhead columns``).
        device: "auto" | "cpu" | "cuda".
        precision: "auto" | "fp32" | "bf16" | "fp16".
        weights: optional local weights file.
        draft: allow JPEG DCT-domain downscaling of large images.
        backend: "auto" | "torch" | "openvino". auto = OpenVINO on the CPU where it is installed
            and converts the column (else torch, with a warning when the conversion failed).
        threads: the column's CPU threads (OpenVINO; torch's are set by the thread tuner).
        cache_dir: where OpenVINO's converted column is kept, in ``openvino/`` (default: the
            default cache folder, ``$COLHEAD_CACHE``, whatever folder the caches go to).
        decode: "auto" | "cpu" | "gpu": where ``decode_batch`` decodes and resizes JPEGs;
            auto = on the column's device when it is CUDA, never on the CPU (``_gpu_decode``).
        compile: torch.compile the column (torch backend; pays off on long GPU runs).
    """

    def __init__(
        self,
        column: str = "efficientnet_lite0",
        *,
        device: str = "auto",
        precision: str = "auto",
        weights: str | os.PathLike | None = None,
        draft: bool = True,
        backend: str = "auto",
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        decode: str = "auto",
        compile: bool = False,
    ):
        self.spec = get_column(column)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if compile and backend == "openvino":
            raise ValueError(
                "--compile compiles the torch column; it cannot go with --backend openvino. "
                "Use --backend torch (or auto) with --compile, or drop --compile."
            )
        # compile asks for torch: auto would otherwise pick OpenVINO on the CPU
        self.backend = check_backend("torch" if compile else backend, self.device)
        self.draft = draft
        self.gpu_decode = resolve_decode(decode, self.device)
        self.compiled = compile
        self.tuner: ThreadTuner | None = None  # set by the extractor when cores are shared
        self.model = self._ov = None
        if self.backend == "openvino":
            try:
                self._load_openvino(weights, threads, cache_dir)
                return
            except BackendError as e:  # auto: a conversion OpenVINO cannot do falls back
                if backend == "openvino":
                    raise RuntimeError(f"OpenVINO could not run column {column}: {e}.") from e
                warnings.warn(
                    f"OpenVINO could not run column {column} ({e}); using torch. Pass "
                    "--backend torch to skip the attempt.",
                    stacklevel=2,
                )
                self.backend = "torch"
        self._load_torch(weights)

    def _load_openvino(self, weights, threads, cache_dir) -> None:
        from . import _openvino
        from ._result import default_cache_dir

        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        self._ov, self.weights_file, self.weights_sha256, self.dim = _openvino.load(
            self.spec, weights, precision=self.precision, threads=threads, cache_dir=folder
        )
        self.channels_last, self.micro_batch = False, _openvino.MICRO_BATCH

    def _load_torch(self, weights) -> None:
        import torch

        model, self.weights_file, self.weights_sha256 = self.spec.build(weights)
        model.eval().to(self.device)
        # channels_last pays off with oneDNN (bf16) on CPU and with cuDNN on GPU
        self.channels_last = self.device.type == "cuda" or self.precision != "fp32"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compiled:
            # inductor fuses the column's ops: the same function within float rounding, so the
            # cache identity stays (as cuDNN's choice of algorithm does); provenance records it
            model = torch.compile(model)
        self.model = model
        pre = self.spec.preprocess
        # normalisation folded into one multiply-add on uint8 input, done on the device
        self._mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0
        # CPU only: the model runs over slices of this many rows (see ``forward``); None = whole.
        self.micro_batch = CPU_MICRO_BATCH if self.device.type == "cpu" else None
        self.dim = self.spec.dim or int(
            self.forward(np.zeros((1, pre.crop, pre.crop, 3), np.uint8)).shape[1]
        )

    @property
    def threads(self) -> int | None:
        """The column's CPU threads: OpenVINO's, or the tuner's latest choice (None: not set)."""
        if self._ov is not None:
            return self._ov.threads
        return self.tuner.best() if self.tuner is not None else None

    @property
    def identity(self) -> dict:
        """What the vectors mean and how they were computed (the cache identity's column part).

        ``precision`` names the backend too when it is not torch (``openvino-bf16``): the
        vectors differ in the last bits, so a cache made by one is never extended by the other.
        """
        return {
            "column": self.spec.name,
            "weights_sha256": self.weights_sha256,
            "preprocess": self.spec.preprocess.to_dict(),
            "precision": identity_precision(self.backend, self.precision),
        }

    @property
    def column_key(self) -> str:
        from ..cache import column_key

        return column_key(self.identity)

    def preprocess(self, image) -> np.ndarray:
        """bytes | path | array -> uint8 (crop, crop, 3). Raises BadImage with the reason."""
        if isinstance(image, (str, Path)):
            try:
                image = Path(image).read_bytes()
            except OSError as e:
                raise BadImage(f"cannot read: {e.strerror or type(e).__name__}") from None
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode(bytes(image), self.spec.preprocess, draft=self.draft)
        return from_array(np.asarray(image), self.spec.preprocess)

    def decode_batch(self, datas: list[bytes]):
        """Bytes of image files -> (uint8 (B_ok, crop, crop, 3) on the device, reasons).

        JPEGs are decoded and resized on the column's device, the rest by ``_images.decode``;
        ``reasons[i]`` is None where item ``i`` decoded, else why not (see ``_gpu_decode``).
        """
        return decode_batch(datas, self.spec.preprocess, device=self.device, draft=self.draft)

    def forward(self, batch) -> np.ndarray:
        """uint8 (B, H, W, 3) array or tensor -> float32 (B, dim) vectors."""
        if self._ov is not None:
            return self._ov(batch.cpu().numpy() if hasattr(batch, "cpu") else np.asarray(batch))
        import torch

        if isinstance(batch, np.ndarray) and not batch.flags.writeable:
            batch = batch.copy()  # e.g. np.asarray(PIL image): torch warns on read-only memory
        x = torch.as_tensor(batch)
        step = self.micro_batch or len(x)
        slices = [x[s : s + step] for s in range(0, len(x), step)] or [x]
        if self.tuner is None:
            return np.concatenate([self._forward(s) for s in slices])
        out = []
        for s in slices:
            t0 = time.perf_counter()
            with self.tuner.threads():
                out.append(self._forward(s))
            self.tuner.record(time.perf_counter() - t0, len(s))
        return np.concatenate(out)

    def _forward(self, x) -> np.ndarray:
        import torch

        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model(x).float().cpu().numpy()

    def embed(self, images, batch_size: int = 64) -> tuple[np.ndarray, list[str | None]]:
        """Vectors for a list of images; a bad image gets a zero row and its error message.

        Returns:
            (features (N, dim) float32, errors: None where the image was fine, else the reason)
        """
        feats = np.zeros((len(images), self.dim), np.float32)
        errors: list[str | None] = [None] * len(images)
        arrays, ok = [], []
        for i, im in enumerate(images):
            try:
                arrays.append(self.preprocess(im))
                ok.append(i)
            except BadImage as e:
                errors[i] = str(e)
        for s in range(0, len(ok), batch_size):
            feats[ok[s : s + batch_size]] = self.forward(np.stack(arrays[s : s + batch_size]))
        return feats, errors
