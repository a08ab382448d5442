"""``python -m xpersist_sql``: the ``xpersist-sql`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
