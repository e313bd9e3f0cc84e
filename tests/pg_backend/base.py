"""PostgreSQL for the project's own tests: the flush after a transactional test deletes rows, it does not truncate.

pytest-django flushes the test databases after every transactional test (most of this suite:
publishing happens on commit). On PostgreSQL, Django flushes with one ``TRUNCATE`` of every
table, which gives each table and index a new file: about 100 ms for the test project's 46
tables, whatever they hold, where deleting the few rows a test left takes a few milliseconds.

* Triggers are off for the flush (``session_replication_role``): the outbox triggers would write
  events for the deleted rows, and foreign keys, checked by triggers, need no order when every
  table is emptied. That takes a superuser (the test settings log in as ``postgres``); as another
  role the flush truncates, as Django does.
* Content types and permissions are kept: after a flush Django runs ``post_migrate``, which would
  create the same rows again, one ``INSERT`` per model.
* A flush that resets sequences (``reset_sequences=True``) truncates, as Django does.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base, operations

#: Rows every test database keeps: ``post_migrate`` would create them again after the flush.
KEPT = frozenset({'django_content_type', 'auth_permission'})


class DatabaseOperations(operations.DatabaseOperations):
    def sql_flush(self, style: Any, tables: Any, *, reset_sequences: bool = False,
                  allow_cascade: bool = False) -> list[str]:
        if reset_sequences or not tables or not self._superuser():
            return super().sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        # Django runs these in one transaction, so SET LOCAL lasts until its end.
        return ['SET LOCAL session_replication_role = replica',
                *(f'DELETE FROM {self.quote_name(table)}' for table in tables if table not in KEPT)]

    def _superuser(self) -> bool:
        """Whether the role the tests log in as is a superuser (asked once per connection object)."""
        known: bool | None = getattr(self.connection, 'test_superuser', None)
        if known is None:
            with self.connection.cursor() as cursor:
                cursor.execute('SELECT rolsuper FROM pg_roles WHERE rolname = current_user')
                row = cursor.fetchone()
            known = self.connection.test_superuser = bool(row and row[0])
        return known


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
