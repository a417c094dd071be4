"""A task's items done and in all, and its file's size

``task.done`` and ``task.total`` are what the last progress report said (an export's
posts), so a progress bar can say "12,345 of 300,000 posts"; ``task.result_bytes`` is
the size of the finished file, for the list of past exports. Existing rows: 0 done, the
rest unknown.

Revision ID: c4f8a2e6d913
Revises: b7e3d1a5c902
Create Date: 2026-12-02 17:58:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c4f8a2e6d913'
down_revision = 'b7e3d1a5c902'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('done', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('total', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('result_bytes', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('result_bytes')
        batch_op.drop_column('total')
        batch_op.drop_column('done')
