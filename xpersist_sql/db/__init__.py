"""The SQL index: tables, engines, the Alembic schema guard and every statement on the rows.

All SQL of the package lives here; nothing here knows of payload files, Prefect or the CLI.
"""
