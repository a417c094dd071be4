"""Export leases and one email per job

A running task holds a lease on its row (lease_owner, lease_expires); the email that
announces a job's result is an outbox row tied to the task, at most one per task.

Revision ID: 426474cba3a4
Revises: 3b7c9d2a41f0
Create Date: 2026-12-02 05:51:22.477723

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '426474cba3a4'
down_revision = '3b7c9d2a41f0'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('email_delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_id', sa.String(length=36), nullable=True))
        batch_op.create_unique_constraint('uq_email_delivery_task_id', ['task_id'])
        batch_op.create_foreign_key('fk_email_delivery_task_id', 'task', ['task_id'], ['id'],
                                    ondelete='SET NULL')

    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('lease_expires', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('lease_expires')
        batch_op.drop_column('lease_owner')

    with op.batch_alter_table('email_delivery', schema=None) as batch_op:
        batch_op.drop_constraint('fk_email_delivery_task_id', type_='foreignkey')
        batch_op.drop_constraint('uq_email_delivery_task_id', type_='unique')
        batch_op.drop_column('task_id')
