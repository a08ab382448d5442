"""Serializers for pandas objects: ``pandas.parquet`` and ``pandas.csv``."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from .registry import Serializer, register_serializer


@register_serializer("pandas.parquet")
class PandasParquetSerializer(Serializer):
    """A parquet file written by :meth:`pandas.DataFrame.to_parquet` (needs pyarrow)."""

    requires = ("pandas", "pyarrow")
    extra = "parquet"

    def dump(self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any) -> None:
        with fs.open(path, "wb") as f:
            value.to_parquet(f, **kwargs)

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import pandas as pd

        with fs.open(path, "rb") as f:
            return pd.read_parquet(f, **kwargs)


@register_serializer("pandas.csv")
class PandasCSVSerializer(Serializer):
    """A CSV file. The index is written as the first column and read back as the index."""

    requires = ("pandas",)

    def dump(
        self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        index = kwargs.setdefault("index", True)
        with fs.open(path, "w", encoding="utf-8", newline="") as f:
            value.to_csv(f, **kwargs)
        return {"index_col": 0} if index else None

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import pandas as pd

        with fs.open(path, "r", encoding="utf-8", newline="") as f:
            return pd.read_csv(f, **kwargs)
