"""The column registry: one table of named columns, plus open-ended name prefixes.

A column spec is a value, as torchvision's weights are: it carries how to build the headless
model, the preprocessing its weights expect, and where the weights come from. Whatever
describes the preprocessing is written into the cache, so vectors always say how they were made.

The builders live apart (``_columns.py`` for the offline columns, ``_external.py`` for ``tv/`` and
``timm/`` names) and register themselves here, so this module imports neither of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

DEFAULT_COLUMN = "efficientnet_lite0"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the column's input: resize the short side, centre-crop, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "nearest"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclass(frozen=True)
class ColumnSpec:
    """A registered column: everything needed to build it and to describe its vectors.

    ``build(weights_file)`` returns ``(headless_model, weights_path_or_None, state_sha256)``.
    ``available()`` says whether it can be built without a network right now.
    ``locate(weights_file)``, when given, names the weights file without building the model, so
    a backend with a converted copy on disk (OpenVINO) can start without torch building it.
    """

    name: str
    dim: int | None
    preprocess: Preprocess
    build: Callable = field(repr=False)
    available: Callable[[], bool] = field(repr=False)
    source: str = ""
    licence: str = ""
    weights_id: str = ""
    description: str = ""
    locate: Callable | None = field(default=None, repr=False)


class ColumnUnavailableError(RuntimeError):
    """A column's weights cannot be had here (no network and no local file)."""


_REGISTRY: dict[str, ColumnSpec] = {}
# Open-ended families: prefix -> (function name -> spec, what to say in "Available: ...").
_PREFIXES: dict[str, tuple[Callable[[str], ColumnSpec], str]] = {}
# Name variants (``NAME:stages``, see ``_stages.py``): (name -> spec or None, what to say).
_VARIANTS: list[tuple[Callable[[str], ColumnSpec | None], str]] = []
_VARIANT_NAMES: list[str] = []  # listed by describe_columns under every registered column


def register_column(spec: ColumnSpec) -> ColumnSpec:
    """Add a column to the registry; a duplicate name is an error, not a silent override."""
    if spec.name in _REGISTRY:
        raise ValueError(f"A column named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def register_prefix(prefix: str, resolve: Callable[[str], ColumnSpec], hint: str) -> None:
    """Add an open-ended family of columns, e.g. ``tv/`` for every torchvision classifier."""
    if prefix in _PREFIXES:
        raise ValueError(f"A column prefix {prefix!r} is already registered.")
    _PREFIXES[prefix] = (resolve, hint)


def register_variants(
    resolve: Callable[[str], ColumnSpec | None], hint: str, names: tuple[str, ...] = ()
) -> None:
    """Add a family of name variants: ``resolve(name)`` gives a spec, or None when not its own."""
    _VARIANTS.append((resolve, hint))
    _VARIANT_NAMES.extend(names)


def list_columns() -> list[str]:
    """Names of the registered columns (``tv/...`` and ``timm/...`` are open-ended on top)."""
    return sorted(_REGISTRY)


def get_column(name: str) -> ColumnSpec:
    """The spec of column ``name``; unknown names list what exists and the closest match."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolve, _ in _VARIANTS:  # before the prefixes: timm/NAME:stages is a variant
        spec = resolve(name)
        if spec is not None:
            return spec
    for prefix, (resolve, _) in _PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name)
    close = difflib.get_close_matches(name, list_columns(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    families = "".join(f", plus {h}" for _, h in [*_PREFIXES.values(), *_VARIANTS])
    raise ValueError(
        f"Unknown column {name!r}.{hint} Available: {', '.join(list_columns())}{families}."
    )


def describe_columns() -> list[dict]:
    """One row per registered column and variant: name, dim, offline, source, licence."""
    rows = []
    names = list_columns()
    for name in names + [f"{n}:{v}" for n in names for v in _VARIANT_NAMES]:
        s = get_column(name)
        rows.append(
            {
                "name": name,
                "dim": s.dim,
                "offline": bool(s.available()),
                "source": s.source,
                "licence": s.licence,
                "description": s.description,
            }
        )
    return rows


def offline_columns() -> list[str]:
    return [n for n in list_columns() if _REGISTRY[n].available()]
