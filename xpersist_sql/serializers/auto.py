"""The ``"auto"`` choice: a serializer name from the value's type."""

from __future__ import annotations

import sys
from typing import Any

from .registry import Serializer, registered_serializers

__all__ = ["BUILT_IN_CHOICES", "FALLBACK", "auto_choices", "pick_serializer"]

#: The built-in rules of ``"auto"``: a type (by its dotted name) and the serializer it picks.
BUILT_IN_CHOICES: tuple[tuple[str, str], ...] = (
    ("xarray.Dataset", "xarray.zarr"),
    ("xarray.DataArray", "xarray.zarr"),
    ("xarray.DataTree", "xarray.zarr"),
    ("pandas.DataFrame", "pandas.parquet"),
    ("numpy.ndarray", "numpy.npy"),
)
#: What ``"auto"`` picks when no rule and no serializer's ``handles`` matches.
FALLBACK = "joblib"


def pick_serializer(value: Any) -> str:
    """Return the serializer name ``serializer="auto"`` uses for ``value``.

    The built-in rules: xarray objects (Dataset, DataArray, DataTree) -> ``xarray.zarr``,
    pandas DataFrames -> ``pandas.parquet``, numpy arrays (of a non-object dtype) ->
    ``numpy.npy``. Registered serializers, those of the ``xpersist_sql.serializers`` entry
    points included, take part through the types they declare in :attr:`Serializer.handles`:

    1. the candidate whose type comes first in ``type(value).__mro__`` wins, so a plugin
       declaring a subclass (``geopandas.GeoDataFrame``) is picked over the built-in rule for
       its base (``pandas.DataFrame``), and a plugin for a type no rule names is picked over
       the fallback;
    2. for the very same type, a built-in rule wins over a plugin (installing a plugin does not
       change how DataFrames, arrays or datasets are stored), and among plugins the first name
       in sorted order;
    3. failing that, the first plugin (by name) whose type ``isinstance`` accepts (abstract base
       classes, virtual subclasses);
    4. anything else -> ``joblib``.

    Types named by a dotted string are matched only once their module is imported, so the choice
    never imports a heavy library (the entry points are loaded, once per process). A serializer
    declaring ``object`` is not consulted: ``object`` would claim every value.
    """
    candidates = _candidates()
    mro = type(value).__mro__
    best: tuple[int, int, str] | None = None
    for cls, name, built_in in candidates:
        if cls not in mro:
            continue
        if built_in and name == "numpy.npy" and _object_dtype(value):
            continue  # object arrays hold pickled objects: np.save refuses them without pickle
        rank = (mro.index(cls), 0 if built_in else 1, name)
        if best is None or rank < best:
            best = rank
    if best is not None:
        return best[2]
    for cls, name, built_in in sorted(candidates, key=lambda c: c[1]):
        if not built_in and isinstance(value, cls):
            return name
    return FALLBACK


def auto_choices() -> frozenset[str]:
    """Return every serializer name ``"auto"`` can pick: what an ``"auto"`` writer may store.

    The built-in rules' serializers, those of registered serializers declaring ``handles``
    (entry points included) and the fallback, ``joblib``.
    """
    declared = {
        name for name, serializer in registered_serializers().items() if _handles(serializer)
    }
    return frozenset({*declared, *(name for _dotted, name in BUILT_IN_CHOICES), FALLBACK})


def _object_dtype(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return getattr(dtype, "kind", None) == "O"


def _candidates() -> list[tuple[type, str, bool]]:
    """Return ``(type, serializer name, is a built-in rule)`` for every type that can match."""
    found: list[tuple[type, str, bool]] = []
    for dotted, name in BUILT_IN_CHOICES:
        cls = _resolve(dotted)
        if cls is not None:
            found.append((cls, name, True))
    built_in_names = {name for _, name in BUILT_IN_CHOICES}
    for name, serializer in registered_serializers().items():
        for declared in _handles(serializer):
            cls = _resolve(declared) if isinstance(declared, str) else declared
            if isinstance(cls, type) and cls is not object:
                found.append((cls, name, name in built_in_names))
    return found


def _handles(serializer: Serializer) -> tuple[type | str, ...]:
    handles = getattr(serializer, "handles", ())
    if isinstance(handles, (str, type)):  # a single type declared without a tuple
        return (handles,)
    return tuple(handles)


def _resolve(dotted: str) -> type | None:
    """Return the class named ``module.Qualified.Name`` if its module is already imported."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        return obj if isinstance(obj, type) else None
    return None
