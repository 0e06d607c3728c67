"""The long-lived layer: predictor, HTTP app, batching and limits.

``Predictor`` (a saved head with its column) serves ``colhead predict``; ``create_app`` and
``run`` serve ``colhead serve``. FastAPI and uvicorn are the optional extra ``colhead[serve]``:
they are imported only when ``create_app`` or ``run`` is first used, so ``import
colhead.service`` works on the core install.
"""

from ._batch import predict_dataset, write_csv
from ._batcher import Batcher, BatcherStopped, ForwardError, QueueFull
from ._limits import check_bind
from ._predictor import HeadColumnMismatch, Predictor
from ._run import run

__all__ = [
    "Batcher",
    "BatcherStopped",
    "ForwardError",
    "HeadColumnMismatch",
    "Predictor",
    "QueueFull",
    "check_bind",
    "create_app",
    "predict_dataset",
    "run",
    "write_csv",
]


def __getattr__(name: str):
    # PEP 562: create_app lives in the module that imports FastAPI; load it on first use only.
    if name == "create_app":
        from ._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
