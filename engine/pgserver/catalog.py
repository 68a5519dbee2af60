"""Placeholder; replaced below."""
from __future__ import annotations


class Catalog:
    def __init__(self, engine) -> None:
        self.engine = engine

    def handles(self, sql: str) -> bool:
        return False

    def query(self, sql: str, session):
        raise NotImplementedError
