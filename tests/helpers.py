"""Small data builders shared by the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def make_dataset(n: int = 24, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "tas": (("time", "x"), rng.normal(size=(n, 5))),
            "pr": (("time",), rng.random(n)),
        },
        coords={"time": pd.date_range("2021-01-01", periods=n, freq="D"), "x": np.arange(5)},
        attrs={"title": "test data"},
    )


def make_frame(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"a": np.arange(n), "b": np.linspace(0, 1, n), "c": [f"s{i}" for i in range(n)]},
        index=pd.Index([f"r{i}" for i in range(n)], name="row"),
    )
