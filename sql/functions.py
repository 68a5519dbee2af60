"""Python scalar functions in SQL: `CREATE FUNCTION f(a DOUBLE) RETURNS DOUBLE LANGUAGE PYTHON AS
'path/file.py:function'`.

A function is called once per batch with one pyarrow Array per argument and returns an Array (or a numpy
array) of the same length; it is registered with DataFusion (its Python `udf` API), so it works wherever
an expression does: view SELECT, WHERE, GROUP BY keys, inside aggregates, and queries. Every DataFusion
session pondstream makes registers the functions loaded here (`register_all`), so the planner's type
checks, the operators and the queries see the same ones. A function that raises makes its batch fail;
the operators then bisect the batch, so exactly the rows it fails on go to `<stream>__errors`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datafusion import SessionContext, udf


class FunctionError(ValueError):
    """A function cannot be loaded or returned something unusable; the message names it."""


@dataclass(frozen=True)
class PythonFunction:
    name: str
    args: tuple[pa.DataType, ...]
    returns: pa.DataType
    path: str  # absolute path of the module file
    attr: str  # the function's name in it

    @property
    def source_hash(self) -> str:
        """A hash of the module's source: `status` shows it, so an edited file is visible."""
        try:
            return hashlib.sha256(Path(self.path).read_bytes()).hexdigest()[:12]
        except OSError:
            return "missing"


LOADED: dict[str, tuple[PythonFunction, Callable[..., Any]]] = {}  # name -> (definition, callable)


def load(fn: PythonFunction) -> None:
    """Import the module (again: an edited file changes future results) and make the function callable
    from SQL; a FunctionError with the traceback's last line if it cannot be imported."""
    path = Path(fn.path)
    if not path.is_file():
        raise FunctionError(f"function {fn.name}: module file {fn.path} does not exist")
    try:
        spec = importlib.util.spec_from_file_location(f"pondstream_udf_{path.stem}_{abs(hash(fn.path))}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in user code is reported, never raised through
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        raise FunctionError(f"function {fn.name}: importing {fn.path} failed: {last}") from None
    target = getattr(module, fn.attr, None)
    if not callable(target):
        raise FunctionError(f"function {fn.name}: {fn.path} has no function {fn.attr}")
    LOADED[fn.name] = (fn, _vectorized(fn, target))


def unload(name: str) -> None:
    LOADED.pop(name, None)


def register_all(ctx: SessionContext) -> None:
    """Register every loaded function with a DataFusion session."""
    for fn, call in LOADED.values():
        ctx.register_udf(udf(call, list(fn.args), fn.returns, "immutable", fn.name))


def _vectorized(fn: PythonFunction, target: Callable[..., Any]) -> Callable[..., pa.Array]:
    """The user's function with its result checked: an Array of the declared type, one value per row."""
    broken: list[str] = []  # a wrong length is the function's fault, not a row's: every later call fails too

    def call(*arrays: pa.Array) -> pa.Array:
        rows = len(arrays[0]) if arrays else None
        if rows == 0:  # planning runs expressions over empty batches: user code need not handle those
            return pa.array([], fn.returns)
        if broken:
            raise FunctionError(broken[0])
        try:
            out = target(*arrays)
        except Exception as e:  # noqa: BLE001 - reported per row by the operators' bisection
            raise FunctionError(f"function {fn.name} raised {type(e).__name__}: {e}") from None
        if isinstance(out, pa.ChunkedArray):
            out = out.combine_chunks()
        elif isinstance(out, np.ndarray | list):
            out = pa.array(out)
        if not isinstance(out, pa.Array):
            raise FunctionError(f"function {fn.name} returned {type(out).__name__}, not a pyarrow or numpy array")
        if rows is not None and len(out) != rows:
            broken.append(f"function {fn.name} returned {len(out)} values for {rows} rows (it must return one per row)")
            raise FunctionError(broken[0])
        if out.type != fn.returns:
            try:
                out = out.cast(fn.returns)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise FunctionError(f"function {fn.name} returned {out.type}, but it RETURNS {fn.returns}") from None
        return out
    return call
