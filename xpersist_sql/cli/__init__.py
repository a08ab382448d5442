"""The ``xpersist-sql`` command line (also ``python -m xpersist_sql``).

Every command selects its store with ``--store PATH`` (or ``$XPERSIST_SQL_STORE``) and its index
with ``--db URL`` (or ``$XPERSIST_SQL_DATABASE_URL``); a local store without ``--db`` uses its
embedded SQLite index. No command but ``import-legacy`` creates a store: a path that is not one
is an error.

Exit status (:data:`._app.EPILOG`, under ``--help``): 0 clean; 1 problems found (``verify``,
``db current`` on an index this version cannot use, ``import-legacy --strict`` with skipped
sidecars, ``rm`` declined at its prompt, ``explain`` of a key that would not hit or is stale);
2 usage or runtime error (one line on stderr). Every command has ``--json``, whose stdout is one
JSON document with stable keys (docs/queries.md).

The package is plain commands: :mod:`._app` holds the typer apps, :mod:`._common` the shared
options and helpers, and each command module (:mod:`.query`, :mod:`.rm`, :mod:`.lineage`,
:mod:`.explain`, :mod:`.maintenance`, :mod:`.db`) imports only those two and the public API;
importing them here registers them.
"""

from __future__ import annotations

import sys
import traceback

from ._app import app
from ._common import EXIT_ERROR

# isort: off
# importing a command module registers its commands, in this order in --help
from . import query, rm, lineage, explain, maintenance, db
# isort: on

__all__ = ["app", "main"]

_COMMANDS = (query, rm, lineage, explain, maintenance, db)


def main() -> None:
    """Run the command line (the ``xpersist-sql`` script).

    An unexpected exception (a bug) prints its traceback and exits with status 2, like every
    other runtime error, never with 1 ("problems found").
    """
    try:
        app(prog_name="xpersist-sql")
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_ERROR)
