"""The ``"auto"`` choice: a serializer name from the value's type."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["pick_serializer"]


def pick_serializer(value: Any) -> str:
    """Return the serializer name ``serializer="auto"`` uses for ``value``.

    xarray objects -> ``xarray.zarr``, pandas DataFrames -> ``pandas.parquet``, numpy arrays (of a
    non-object dtype) -> ``numpy.npy``, anything else -> ``joblib``. Only modules that are already
    imported are consulted, so the choice never imports a heavy library.
    """
    xr = sys.modules.get("xarray")
    if xr is not None and isinstance(value, (xr.Dataset, xr.DataArray)):
        return "xarray.zarr"
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        return "pandas.parquet"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray) and value.dtype != object:
        return "numpy.npy"
    return "joblib"
