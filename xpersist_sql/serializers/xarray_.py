"""Serializers for xarray objects: ``xarray.zarr`` and ``xarray.netcdf``.

Both load lazily: :meth:`CacheStore.get` returns a dataset whose variables are read on access.
A :class:`xarray.DataArray` is stored as a one-variable dataset and comes back as a DataArray;
a :class:`xarray.DataTree` is stored with its groups (zarr groups, netCDF groups) and comes back
as a DataTree. ``load_kwargs={"chunks": {}}`` gives dask-backed variables and needs the
``dask`` extra; a dask-backed value is written chunk by chunk, in parallel, by dask.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fsspec import AbstractFileSystem

from ..errors import MissingDependencyError
from ._local import is_local, local_target
from .registry import Serializer, package_versions, register_serializer

_AS_DATAARRAY = "as_dataarray"
_AS_DATATREE = "as_datatree"


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


def _is_datatree(value: Any) -> bool:
    import xarray as xr

    return isinstance(value, xr.DataTree)


def _shape_hints(value: Any) -> dict[str, Any]:
    """Return the load hints that bring back the value's own type (DataArray, DataTree)."""
    if _is_dataarray(value):
        return {_AS_DATAARRAY: True}
    if _is_datatree(value):
        return {_AS_DATATREE: True}
    return {}


def _check_chunks(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse a chunked load without dask: a missing package, not a corrupt payload."""
    if kwargs.get("chunks") is not None and importlib.util.find_spec("dask") is None:
        raise MissingDependencyError(
            f"serializer {name!r} needs dask for load_kwargs chunks={kwargs['chunks']!r} "
            "(dask-backed variables): pip install 'xpersist_sql[dask]', or load without "
            "chunks"
        )


@register_serializer("xarray.zarr")
class XarrayZarrSerializer(Serializer):
    """A zarr store written by ``Dataset.to_zarr`` and opened by :func:`xarray.open_zarr`.

    ``dump_kwargs`` go to ``to_zarr`` (e.g. ``encoding``, or ``{"zarr_format": 2}`` for readers
    of the older format), over :data:`ZARR_DEFAULTS` (format 3, consolidated metadata);
    ``load_kwargs`` to ``open_zarr`` (e.g. ``chunks``). A payload written with
    ``consolidated=False`` records ``consolidated=False`` for its loads. A DataTree is opened
    with :func:`xarray.open_datatree`.
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
        hints = _shape_hints(value)
        if not kwargs["consolidated"]:
            hints["consolidated"] = False  # else open_zarr looks for it, and warns
        return hints or None

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import xarray as xr

        as_dataarray = kwargs.pop(_AS_DATAARRAY, False)
        as_datatree = kwargs.pop(_AS_DATATREE, False)
        _check_chunks(self.name, kwargs)
        with _quiet_consolidated():
            if as_datatree:
                kwargs.setdefault("chunks", None)
                return xr.open_datatree(self._store(fs, path), engine="zarr", **kwargs)
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
        hints = _shape_hints(value)
        if "engine" in kwargs:
            hints["engine"] = kwargs["engine"]
        return hints or None

    def load(self, fs: AbstractFileSystem, path: str, **kwargs: Any) -> Any:
        import xarray as xr

        opener: Callable[..., Any] = (
            xr.open_dataarray if kwargs.pop(_AS_DATAARRAY, False) else xr.open_dataset
        )
        if kwargs.pop(_AS_DATATREE, False):
            opener = xr.open_datatree
        _check_chunks(self.name, kwargs)
        if is_local(fs):
            return opener(path, **kwargs)
        kwargs.setdefault("engine", "h5netcdf")
        return opener(fs.open(path, "rb"), **kwargs)
