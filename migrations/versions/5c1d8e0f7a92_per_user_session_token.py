"""A per-user session token

Every session and remember-me cookie names the user by ``"<id>:<session_token>"``;
signing out, a password change and a reset give the user a new token, which ends
all of them. Existing users get a random token each, so their current sessions end
once: everyone signs in again after the upgrade.

Revision ID: 5c1d8e0f7a92
Revises: 7d2e4a9b3c15
Create Date: 2026-12-02 11:20:00.000000

"""
import secrets

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5c1d8e0f7a92'
down_revision = '7d2e4a9b3c15'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_token', sa.String(length=32), nullable=True))

    connection = op.get_bind()
    user = sa.table('user', sa.column('id', sa.Integer), sa.column('session_token', sa.String))
    for (user_id,) in connection.execute(sa.select(user.c.id)).all():
        connection.execute(sa.update(user).where(user.c.id == user_id)
                           .values(session_token=secrets.token_urlsafe(16)))

    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.alter_column('session_token', existing_type=sa.String(length=32), nullable=False)


def downgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('session_token')
