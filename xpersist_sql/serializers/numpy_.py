"""The ``numpy.npy`` serializer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem

from ._local import is_local
from .registry import Serializer, register_serializer


@register_serializer("numpy.npy")
class NumpyNpySerializer(Serializer):
    """A single array in numpy's ``.npy`` format (no pickled objects unless asked for).

    On the local filesystem ``load_kwargs={"mmap_mode": "r"}`` memory-maps the file.
    """

    requires = ("numpy",)

    def runs_code(self, load_kwargs: Mapping[str, Any]) -> bool:
        """Whether the load unpickles object arrays (``allow_pickle=True``), which runs code."""
        return bool(load_kwargs.get("allow_pickle", False))

    def dump(self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any) -> None:
        import numpy as np

        kwargs.setdefault("allow_pickle", False)
        with fs.open(path, "wb") as f:
            np.save(f, np.asanyarray(value), **kwargs)

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import numpy as np

        kwargs.setdefault("allow_pickle", False)
        if is_local(fs):
            return np.load(path, **kwargs)
        kwargs.pop("mmap_mode", None)
        with fs.open(path, "rb") as f:
            return np.load(f, **kwargs)
