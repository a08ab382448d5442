"""Serializers: how values become payloads on an fsspec filesystem, and back.

Built-ins: ``xarray.zarr``, ``xarray.netcdf``, ``joblib``, ``pickle``, ``json``, ``numpy.npy``,
``pandas.parquet``, ``pandas.csv``. ``"auto"`` picks one by type (:func:`pick_serializer`).
Third parties add theirs with :func:`register_serializer` or the ``xpersist_sql.serializers``
entry-point group; a serializer joins ``"auto"`` by declaring the types it ``handles``, and a
plugin that fails to load is reported by a :class:`SerializerPluginWarning` without hiding the
others.
"""

from . import numpy_, pandas_, python, xarray_  # noqa: F401  (register the built-ins)
from .auto import auto_choices, pick_serializer
from .registry import (
    ENTRY_POINT_GROUP,
    Serializer,
    SerializerPluginWarning,
    available_serializers,
    get_serializer,
    register_serializer,
    registered_serializers,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Serializer",
    "SerializerPluginWarning",
    "auto_choices",
    "available_serializers",
    "get_serializer",
    "pick_serializer",
    "register_serializer",
    "registered_serializers",
]
