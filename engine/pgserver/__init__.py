"""A PostgreSQL-wire-protocol server over the materialized views (`pondstream serve`); see serve.py."""
