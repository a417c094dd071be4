"""A user's language and time zone

``user.locale`` is the language the user chose to read the site in, ``user.timezone``
their IANA time zone; both empty for existing users, who get their browser's.

Revision ID: 9a4f2c6e8b10
Revises: 5c1d8e0f7a92
Create Date: 2026-12-02 16:26:31.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9a4f2c6e8b10'
down_revision = '5c1d8e0f7a92'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('timezone')
        batch_op.drop_column('locale')
