"""A column held in memory: images in, vectors out. Shared by the extractor, predict and serve."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path

import numpy as np

from .._device import autocast, resolve_device, resolve_precision
from ._columns import get_column
from ._images import BadImage, decode, from_array

# On the CPU the column runs best over small slices of a batch: EfficientNet-Lite0's activations
# for 8 images stay in cache, for 64 they do not. The slicing is a fixed function of the batch, so
# a resumed extraction still computes exactly what an uninterrupted one does.
CPU_MICRO_BATCH = 8


class ThreadTuner:
    """Choose the column's torch thread count by measuring it, and keep measuring.

    On shared cores (decode workers, other jobs) an OpenMP forward with as many threads as
    cores stalls at every layer's barrier whenever one of its threads is preempted, and fewer
    threads win; on idle cores more threads win. Each option is tried (its first slice is warm-up
    and not counted), then the fastest per image (median of its last three slices) is used. The
    other option is tried again after ``every`` slices, since the load on the cores changes;
    while it keeps losing, the wait doubles (up to ``max_every``), so a collapsed option costs
    little. The vectors do not depend on the thread count (checked for the CPU kernels colhead
    uses), only the speed does.
    """

    def __init__(self, options, *, every: int = 16, probes: int = 1, max_every: int = 256):
        self.options = sorted(set(int(o) for o in options if o >= 1))
        self.every, self.probes, self.max_every = every, probes, max_every
        self.spi: dict[int, list[float]] = {o: [] for o in self.options}  # s/image, last 3
        self.seen = {o: 0 for o in self.options}
        self.last = {o: -1 for o in self.options}
        self.calls = 0
        self.gap = every
        self.next_check: int | None = None
        self.checking: int | None = None
        self.current = self.options[0]

    def best(self) -> int:
        # the median of the last three: one slice hit by a preemption does not decide
        return min(self.options, key=lambda o: statistics.median(self.spi[o] or [float("inf")]))

    def choose(self) -> int:
        self.calls += 1
        for o in self.options:  # explore: warm-up plus ``probes`` measured slices each
            if self.seen[o] < self.probes + 1:
                return o
        if self.next_check is None:
            self.next_check = self.calls + self.gap
        if self.calls >= self.next_check and len(self.options) > 1:
            self.checking = min(self.options, key=lambda o: self.last[o])  # measured longest ago
            return self.checking
        return self.best()

    @contextlib.contextmanager
    def threads(self):
        """Run the block with the chosen thread count, then give the caller's back."""
        import torch

        self.current = self.choose()
        before = torch.get_num_threads()
        torch.set_num_threads(self.current)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def record(self, seconds: float, n: int) -> None:
        o = self.current
        self.seen[o] += 1
        self.last[o] = self.calls
        if self.seen[o] > 1 and n > 0:  # the first slice on a thread count is warm-up
            self.spi[o] = self.spi[o][-2:] + [seconds / n]
        if o == self.checking:  # a re-check: back off while the re-checked option keeps losing
            self.checking = None
            self.gap = self.every if self.best() == o else min(2 * self.gap, self.max_every)
            self.next_check = self.calls + self.gap


class Embedder:
    """Load a column once (frozen, eval mode) and turn batches of images into vectors.

    Args:
        column: column name (see ``colhead columns``).
        device: "auto" | "cpu" | "cuda".
        precision: "auto" | "fp32" | "bf16" | "fp16".
        weights: optional local weights file.
        draft: allow JPEG DCT-domain downscaling of large images.
    """

    def __init__(
        self,
        column: str = "efficientnet_lite0",
        *,
        device: str = "auto",
        precision: str = "auto",
        weights: str | os.PathLike | None = None,
        draft: bool = True,
    ):
        import torch

        self.spec = get_column(column)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.draft = draft
        model, self.weights_file, self.weights_sha256 = self.spec.build(weights)
        model.eval().to(self.device)
        # channels_last pays off with oneDNN (bf16) on CPU and with cuDNN on GPU
        self.channels_last = self.device.type == "cuda" or self.precision != "fp32"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        pre = self.spec.preprocess
        # normalisation folded into one multiply-add on uint8 input, done on the device
        self._mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0
        # CPU only: the model runs over slices of this many rows (see ``forward``); None = whole.
        self.micro_batch = CPU_MICRO_BATCH if self.device.type == "cpu" else None
        self.tuner: ThreadTuner | None = None  # set by the extractor when cores are shared
        self.dim = self.spec.dim or int(
            self.forward(np.zeros((1, pre.crop, pre.crop, 3), np.uint8)).shape[1]
        )

    @property
    def identity(self) -> dict:
        """What the vectors mean and how they were computed (the cache identity's column part)."""
        return {
            "column": self.spec.name,
            "weights_sha256": self.weights_sha256,
            "preprocess": self.spec.preprocess.to_dict(),
            "precision": self.precision,
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

    def forward(self, batch) -> np.ndarray:
        """uint8 (B, H, W, 3) array or tensor -> float32 (B, dim) vectors."""
        import torch

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
