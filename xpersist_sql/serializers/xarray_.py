"""Serializers for xarray objects: ``xarray.zarr`` and ``xarray.netcdf``.

Both load lazily: :meth:`CacheStore.get` returns a dataset whose variables are read on access.
A :class:`xarray.DataArray` is stored as a one-variable dataset and comes back as a DataArray.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsspec import AbstractFileSystem

from ..errors import MissingDependencyError
from ._local import is_local, local_target
from .registry import Serializer, package_versions, register_serializer

_AS_DATAARRAY = "as_dataarray"


#: How payloads are written unless ``dump_kwargs`` say otherwise: zarr format 3 (zarr-python 3's
#: own format) with consolidated metadata, so that opening a payload reads one metadata document
#: (one request on an object store, whatever the number of variables) and a plain
#: ``xr.open_zarr(path)`` opens it without a warning. See docs/serializers.md.
ZARR_DEFAULTS: dict[str, Any] = {"zarr_format": 3, "consolidated": True}


@contextmanager
def _quiet_consolidated() -> Iterator[None]:
    # zarr 3 warns, on every write, that consolidated metadata is not part of the format 3
    # specification yet. Writing it is our deliberate choice (ZARR_DEFAULTS): silence only that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def _is_dataarray(value: Any) -> bool:
    import xarray as xr

    return isinstance(value, xr.DataArray)


@register_serializer("xarray.zarr")
class XarrayZarrSerializer(Serializer):
    """A zarr store written by ``Dataset.to_zarr`` and opened by :func:`xarray.open_zarr`.

    ``dump_kwargs`` go to ``to_zarr`` (e.g. ``encoding``, or ``{"zarr_format": 2}`` for readers
    of the older format), over :data:`ZARR_DEFAULTS` (format 3, consolidated metadata);
    ``load_kwargs`` to ``open_zarr`` (e.g. ``chunks``). A payload written with
    ``consolidated=False`` records ``consolidated=False`` for its loads.
    """

    requires = ("xarray", "zarr", "numpy")

    def _store(self, fs: AbstractFileSystem, path: str) -> Any:
        return path if is_local(fs) else fs.get_mapper(path)

    def dump(
        self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        kwargs = {**ZARR_DEFAULTS, **kwargs}
        with _quiet_consolidated():
            value.to_zarr(self._store(fs, path), **kwargs)
        hints: dict[str, Any] = {}
        if not kwargs["consolidated"]:
            hints["consolidated"] = False  # else open_zarr looks for it, and warns
        if _is_dataarray(value):
            hints[_AS_DATAARRAY] = True
        return hints or None

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import xarray as xr

        as_dataarray = kwargs.pop(_AS_DATAARRAY, False)
        with _quiet_consolidated():
            if as_dataarray:
                kwargs.setdefault("chunks", None)
                return xr.open_dataarray(self._store(fs, path), engine="zarr", **kwargs)
            kwargs.setdefault("chunks", None)
            return xr.open_zarr(self._store(fs, path), **kwargs)


_NETCDF_ENGINES = ("netCDF4", "h5netcdf", "scipy")


@register_serializer("xarray.netcdf")
class XarrayNetCDFSerializer(Serializer):
    """A netCDF file written by ``Dataset.to_netcdf``, opened by :func:`xarray.open_dataset`.

    Needs one netCDF engine (netCDF4, h5netcdf or scipy); the ``netcdf`` extra installs h5netcdf.
    Remote payloads are read through a file object with h5netcdf.
    """

    requires = ("xarray", "numpy")
    extra = "netcdf"

    def check_requirements(self) -> None:
        super().check_requirements()
        if not any(importlib.util.find_spec(engine) for engine in _NETCDF_ENGINES):
            raise MissingDependencyError(
                f"serializer {self.name!r} needs a netCDF engine (one of "
                f"{', '.join(_NETCDF_ENGINES)}), none is installed: "
                "pip install 'xpersist_sql[netcdf]'"
            )

    def versions(self) -> dict[str, str]:
        engines = tuple(e for e in _NETCDF_ENGINES if importlib.util.find_spec(e))
        return package_versions(self.requires + engines)

    def dump(
        self, value: Any, fs: AbstractFileSystem, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        with local_target(fs, path, suffix=".nc") as target:
            value.to_netcdf(target, **kwargs)
        hints: dict[str, Any] = {}
        if "engine" in kwargs:
            hints["engine"] = kwargs["engine"]
        if _is_dataarray(value):
            hints[_AS_DATAARRAY] = True
        return hints or None

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import xarray as xr

        opener = xr.open_dataarray if kwargs.pop(_AS_DATAARRAY, False) else xr.open_dataset
        if is_local(fs):
            return opener(path, **kwargs)
        kwargs.setdefault("engine", "h5netcdf")
        return opener(fs.open(path, "rb"), **kwargs)
