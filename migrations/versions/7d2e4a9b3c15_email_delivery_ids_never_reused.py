"""Email delivery ids are never reused, again (SQLite)

On SQLite, revision 426474cba3a4 rebuilt ``email_delivery`` (batch mode copies the
table) without ``AUTOINCREMENT``, so after the newest rows were deleted their ids could
come back, and a late task message for a deleted delivery could claim a new one. The
table is rebuilt with ``AUTOINCREMENT``; the copy keeps every row and its id, and the
counter continues from the largest. Other databases never reuse ids: nothing to do.

Revision ID: 7d2e4a9b3c15
Revises: 426474cba3a4
Create Date: 2026-12-02 10:35:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '7d2e4a9b3c15'
down_revision = '426474cba3a4'
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table('email_delivery', recreate='always',
                              table_kwargs={'sqlite_autoincrement': autoincrement}):
        pass


def upgrade():
    _rebuild(True)


def downgrade():
    _rebuild(False)
