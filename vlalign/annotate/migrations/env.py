"""Alembic environment of the labelling database: run on the connection vlalign hands over.

vlalign calls Alembic in-process (:func:`vlalign.annotate.database.upgrade`), passing an open
connection in ``config.attributes["connection"]``; there is no alembic.ini to keep in sync.
"""

from alembic import context

from vlalign.annotate.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
