"""Python functions the UDF tests register: well-behaved, raising on some rows, and wrong."""

import numpy as np
import pyarrow as pa


def fragile(order_id: pa.Array) -> pa.Array:
    ids = order_id.to_numpy(zero_copy_only=False)
    if (ids % 97 == 0).any():
        raise ValueError("order ids divisible by 97 are cursed")
    return pa.array(ids * 2)


def short(x: pa.Array) -> pa.Array:
    return pa.array([1.0])


def wrong_type(x: pa.Array) -> pa.Array:
    return pa.array(["not a number"] * len(x))


def triple(x: pa.Array) -> np.ndarray:
    return x.to_numpy(zero_copy_only=False) * 3
