"""An index on a task's result location

The export cleanup lists the stored files and looks their tasks up by file name, a few
hundred at a time: with the index, each look-up reads only those rows, however many
tasks the table has kept.

Revision ID: b7e3d1a5c902
Revises: 9a4f2c6e8b10
Create Date: 2026-12-02 17:50:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'b7e3d1a5c902'
down_revision = '9a4f2c6e8b10'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_result_location'), ['result_location'], unique=False)


def downgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_result_location'))
