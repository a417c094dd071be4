"""Re-seal the request contexts the email outbox stored in the earlier signed format

Flask-Celery-Request refuses the signed, unencrypted contexts of app/celery_context.py.
Pending and retrying deliveries keep theirs in email_delivery.request_context, for
re-sends: each one that verifies under SECRET_KEY (or a fallback) is sealed again in
the new format, with the time of the migration; one that does not verify is cleared, so
its email is still sent, with links on SERVER_NAME.

Revision ID: 3b7c9d2a41f0
Revises: e01dd2941fd8
Create Date: 2026-12-02 05:20:00.000000

"""
import json
import logging

import sqlalchemy as sa
from alembic import op
from flask import current_app
from itsdangerous import BadSignature, Signer

from flask_celery_request.settings import ContextSettings
from flask_celery_request.transport import PREFIX, Sealer

# revision identifiers, used by Alembic.
revision = '3b7c9d2a41f0'
down_revision = 'e01dd2941fd8'
branch_labels = None
depends_on = None

logger = logging.getLogger("alembic.runtime.migration")

_SIGNED_SALT = "celery-with-context.v1"
_deliveries = sa.table(
    "email_delivery",
    sa.column("id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("request_context", sa.Text),
)
_UNSENT = ("pending", "retrying", "sending")


def _keys() -> list[str]:
    return [current_app.secret_key, *reversed(current_app.config.get("SECRET_KEY_FALLBACKS") or [])]


def upgrade():
    connection = op.get_bind()
    signer = Signer(list(reversed(_keys())), salt=_SIGNED_SALT)
    sealer = Sealer(_keys(), ContextSettings.from_config(current_app.config))
    rows = connection.execute(
        sa.select(_deliveries.c.id, _deliveries.c.request_context)
        .where(_deliveries.c.request_context.is_not(None), _deliveries.c.status.in_(_UNSENT))
    ).all()
    resealed = cleared = 0
    for delivery_id, token in rows:
        if token.startswith(PREFIX):
            continue
        try:
            context = json.loads(signer.unsign(token))
            context.pop("v")
            new = sealer.seal(sealer.encode(context))
            resealed += 1
        except (BadSignature, ValueError, KeyError, TypeError, AttributeError):
            new = None
            cleared += 1
        connection.execute(sa.update(_deliveries).where(_deliveries.c.id == delivery_id)
                           .values(request_context=new))
    if resealed or cleared:
        logger.info("Re-sealed %d outbox request context(s); cleared %d that did not verify",
                    resealed, cleared)
    # Sent, failed and skipped deliveries are never re-sent: their context has no use left.
    connection.execute(sa.update(_deliveries).where(_deliveries.c.status.not_in(_UNSENT))
                       .values(request_context=None))


def downgrade():
    # The earlier code cannot open sealed contexts: it would refuse them. Clear them, so
    # its re-sends still go out, with links on SERVER_NAME.
    op.get_bind().execute(sa.update(_deliveries).where(_deliveries.c.request_context.like(PREFIX + "%"))
                          .values(request_context=None))
