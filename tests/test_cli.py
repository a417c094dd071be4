"""app/cli.py: ``flask seed-posts USERNAME COUNT`` and the plain function behind it."""
import time

import pytest
import sqlalchemy as sa

from app.cli import seed_posts
from app.extensions import db
from app.models import Post, User, utcnow


@pytest.fixture
def susan(app) -> int:
    with app.app_context():
        user = User(username="susan", email="susan@example.com")
        user.set_password("correct horse")
        db.session.add(user)
        db.session.commit()
        return user.id


def seeded(app) -> list[Post]:
    with app.app_context():
        return db.session.scalars(sa.select(Post).order_by(Post.id)).all()


def test_seed_posts_inserts_exactly_count_posts_for_the_user(app, runner, susan):
    result = runner.invoke(args=["seed-posts", "susan", "50"])
    assert result.exit_code == 0, result.output
    assert "Inserted 50 posts for susan" in result.output
    assert [post.user_id for post in seeded(app)] == [susan] * 50


def test_seeded_timestamps_are_distinct_and_increasing(app, runner, susan):
    runner.invoke(args=["seed-posts", "susan", "50"])
    stamps = [post.timestamp for post in seeded(app)]
    assert len(stamps) == 50
    assert all(earlier < later for earlier, later in zip(stamps, stamps[1:]))


def test_newest_seeded_post_is_not_in_the_future(app, runner, susan):
    before = utcnow()
    runner.invoke(args=["seed-posts", "susan", "50"])
    newest = seeded(app)[-1].timestamp
    assert before <= newest <= utcnow()


def test_seed_posts_adds_to_existing_posts(app, runner, susan):
    runner.invoke(args=["seed-posts", "susan", "3"])
    runner.invoke(args=["seed-posts", "susan", "4"])
    assert len(seeded(app)) == 7


def test_seeded_posts_show_on_the_timeline_newest_first(runner, susan, auth):
    runner.invoke(args=["seed-posts", "susan", "30"])
    auth.login("susan")
    html = auth.client.get("/").get_data(as_text=True)
    assert html.index("Post 30 by susan") < html.index("Post 29 by susan")
    # 25 to a page: posts 30 down to 6 are on the first one.
    assert "Post 6 by susan" in html and "Post 5 by susan" not in html


def test_seed_posts_zero_inserts_nothing(app, runner, susan):
    result = runner.invoke(args=["seed-posts", "susan", "0"])
    assert result.exit_code == 0
    assert seeded(app) == []


def test_seed_posts_for_an_unknown_user_fails_clearly(app, runner, susan):
    result = runner.invoke(args=["seed-posts", "nobody", "5"])
    assert result.exit_code != 0
    assert "no user named 'nobody'" in result.output
    assert seeded(app) == []


@pytest.mark.parametrize(
    "args", [["susan", "-5"], ["--", "susan", "-5"]], ids=["as-option", "after-double-dash"]
)
def test_seed_posts_rejects_a_negative_count(app, runner, susan, args):
    result = runner.invoke(args=["seed-posts", *args])
    assert result.exit_code == 2
    assert "-5" in result.output
    assert seeded(app) == []


def test_seed_posts_rejects_a_count_that_is_not_a_number(runner, susan):
    result = runner.invoke(args=["seed-posts", "susan", "many"])
    assert result.exit_code == 2
    assert "'many' is not a valid integer" in result.output


def test_seed_posts_function_rejects_a_negative_count(app, susan):
    with app.app_context():
        user = db.session.get(User, susan)
        with pytest.raises(ValueError, match="-1"):
            seed_posts(user, -1)


def test_seed_posts_function_batches_cover_every_row(app, susan):
    with app.app_context():
        user = db.session.get(User, susan)
        assert seed_posts(user, 25, batch_size=7) == 25
    assert len(seeded(app)) == 25


def test_seed_posts_function_seeds_200k_rows_quickly(app, susan):
    with app.app_context():
        user = db.session.get(User, susan)
        began = time.perf_counter()
        inserted = seed_posts(user, 200_000)
        elapsed = time.perf_counter() - began
        count = db.session.scalar(sa.select(sa.func.count(Post.id)).where(Post.user_id == susan))
    print(f"seed_posts: {inserted} rows in {elapsed:.2f}s ({inserted / elapsed:,.0f} rows/s)")
    assert inserted == count == 200_000
