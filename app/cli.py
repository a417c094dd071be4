"""Flask CLI commands: ``flask seed-posts USERNAME COUNT``, ``flask cleanup-exports``."""
from __future__ import annotations

import time
from datetime import timedelta
from itertools import islice

import click
import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from app.models import Post, User, utcnow


def seed_posts(user: User, count: int, batch_size: int = 20_000) -> int:
    """Insert ``count`` posts for ``user`` in bulk, one second apart, the newest now."""
    if count < 0:
        raise ValueError(f"count must be zero or more, found {count}")
    start = utcnow() - timedelta(seconds=count)
    table = Post.__table__
    rows = (
        {"body": f"Post {n} by {user.username}", "timestamp": start + timedelta(seconds=n), "user_id": user.id}
        for n in range(1, count + 1)
    )
    inserted = 0
    with db.engine.begin() as connection:
        while batch := list(islice(rows, batch_size)):
            connection.execute(sa.insert(table), batch)
            inserted += len(batch)
    return inserted


def register_cli(app: Flask) -> None:
    @app.cli.command("seed-posts")
    @click.argument("username")
    @click.argument("count", type=click.IntRange(min=0))
    @click.option("--batch-size", default=20_000, show_default=True, type=click.IntRange(min=1))
    def seed_posts_command(username: str, count: int, batch_size: int) -> None:
        """Insert COUNT posts for USERNAME quickly (demos and benchmarks)."""
        user = db.session.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user named {username!r}; register one first")
        began = time.perf_counter()
        inserted = seed_posts(user, count, batch_size)
        click.echo(f"Inserted {inserted} posts for {username} in {time.perf_counter() - began:.1f}s")

    @app.cli.command("cleanup-exports")
    def cleanup_exports_command() -> None:
        """Remove exports older than EXPORT_RETENTION_DAYS and fail stuck tasks."""
        from app.exports import cleanup_exports

        report = cleanup_exports()
        click.echo(
            f"Removed {report.files_removed} expired export(s) and {report.temporary_files_removed} "
            f"temporary file(s); marked {report.stale_tasks_failed} stuck task(s) as failed"
        )

    @app.cli.command("mail-failures")
    def mail_failures_command() -> None:
        """List emails we gave up on, newest first, with the reason."""
        from app.outbox import failed_deliveries

        failures = failed_deliveries()
        if not failures:
            click.echo("No failed emails.")
            return
        for delivery in failures:
            click.echo(
                f"{delivery.updated:%Y-%m-%d %H:%M:%S} UTC  #{delivery.id} {delivery.kind} to "
                f"{delivery.recipient}  after {delivery.attempts} attempt(s): {delivery.last_error}"
            )
