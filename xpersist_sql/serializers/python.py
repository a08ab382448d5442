"""Serializers for plain Python objects: ``json``, ``pickle`` and ``joblib``."""

from __future__ import annotations

import json
import pickle
from typing import Any

from fsspec import AbstractFileSystem

from ._local import is_local, read_bytes, write_bytes
from .registry import Serializer, register_serializer


@register_serializer("json")
class JSONSerializer(Serializer):
    """JSON text, written with :func:`json.dump` (``dump_kwargs`` go to it)."""

    def dump(self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any) -> None:
        text = json.dumps(value, **kwargs)
        if is_local(fs):  # the same file, without a file object around it
            write_bytes(path, text.encode("utf-8"))
            return
        with fs.open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        if is_local(fs):
            return json.loads(read_bytes(path), **kwargs)
        with fs.open(path, "rb") as f:
            return json.loads(f.read(), **kwargs)


@register_serializer("pickle")
class PickleSerializer(Serializer):
    """A :mod:`pickle` file (highest protocol unless ``protocol`` is given).

    Loading a pickle runs code it holds: see "Trust" in the serializers guide.
    """

    runs_code_on_load = True

    def dump(self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any) -> None:
        kwargs.setdefault("protocol", pickle.HIGHEST_PROTOCOL)
        with open(path, "wb") if is_local(fs) else fs.open(path, "wb") as f:
            pickle.dump(value, f, **kwargs)

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        with open(path, "rb") if is_local(fs) else fs.open(path, "rb") as f:
            return pickle.load(f, **kwargs)


@register_serializer("joblib")
class JoblibSerializer(Serializer):
    """A :func:`joblib.dump` file: efficient for objects holding large numpy arrays.

    joblib files are pickles: loading one runs code it holds (see "Trust" in the serializers
    guide).
    """

    requires = ("joblib",)
    runs_code_on_load = True

    def dump(self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any) -> None:
        import joblib

        with open(path, "wb") if is_local(fs) else fs.open(path, "wb") as f:
            joblib.dump(value, f, **kwargs)

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import joblib

        with open(path, "rb") if is_local(fs) else fs.open(path, "rb") as f:
            return joblib.load(f, **kwargs)
