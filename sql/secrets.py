"""Secrets stay out of SQL text and state: an option value `'${NAME}'` is read from the environment when
a pipeline runs (and stored as written), and a secret-like option given literally is refused at CREATE.

One rule for every connector: which options hold secrets (`is_secret`), how a reference is written
(`REFERENCE`), and how it is resolved at run time (`resolve`), so no file under the state dir, no status
and no error message ever holds a secret's value.
"""

from __future__ import annotations

import os
import re

REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
SECRET_WORDS = re.compile(r"(password|secret|user\.info|api\.key|token)", re.IGNORECASE)


def is_secret(key: str) -> bool:
    """Options whose values are credentials: sasl.password, ssl.key.password, ...client.secret, the schema
    registry's basic.auth.user.info, tokens and API keys."""
    return bool(SECRET_WORDS.search(key))


def literal_secret_problem(key: str, value: str) -> str | None:
    """Why a secret-like option may not be written as is (None: it is a reference, or not a secret)."""
    if not is_secret(key) or REFERENCE.match(value):
        return None
    name = re.sub(r"[^A-Za-z0-9]+", "_", key.rsplit(".", 2)[-1] if "." in key else key).upper().strip("_")
    return (f"option {key} holds a secret, which would be stored in the catalog in plain text: write "
            f"{key} = '${{{name}}}' and set {name} in the environment of pondstream run")


def resolve(key: str, value: str) -> str:
    """The value to use at run time: `${NAME}` read from the environment (a ValueError naming NAME if it
    is not set), anything else as written."""
    m = REFERENCE.match(value)
    if m is None:
        return value
    found = os.environ.get(m.group(1))
    if found is None:
        raise ValueError(f"option {key} = '${{{m.group(1)}}}' needs the environment variable {m.group(1)}, "
                         f"which is not set; export it before pondstream run")
    return found
