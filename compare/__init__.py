"""The comparison pipeline, the layer above extract, cache and heads.

``compare`` runs a column + heads against a scratch CNN on one data set and writes a report;
``train_heads`` fits heads on one cache and scores them on another (``colhead heads``).
Modules: ``_data`` (splits, names, report folder, raw images), ``_train`` (heads on caches),
``_pipeline`` (extraction, the shots protocol, the report).
"""

from ._data import data_name, report_dir, resolve_specs
from ._pipeline import compare
from ._train import aligned_labels, head_meta, parse_heads, train_heads

__all__ = [
    "aligned_labels",
    "compare",
    "data_name",
    "head_meta",
    "parse_heads",
    "report_dir",
    "resolve_specs",
    "train_heads",
]
