"""Serializers: how values become payloads on an fsspec filesystem, and back.

Built-ins: ``xarray.zarr``, ``xarray.netcdf``, ``joblib``, ``pickle``, ``json``, ``numpy.npy``,
``pandas.parquet``, ``pandas.csv``. ``"auto"`` picks one by type (:func:`pick_serializer`).
"""

from . import numpy_, pandas_, python, xarray_  # noqa: F401  (register the built-ins)
from .auto import pick_serializer
from .registry import (
    ENTRY_POINT_GROUP,
    Serializer,
    available_serializers,
    get_serializer,
    register_serializer,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Serializer",
    "available_serializers",
    "get_serializer",
    "pick_serializer",
    "register_serializer",
]
