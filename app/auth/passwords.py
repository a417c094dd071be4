"""What a new password must be: long enough, not common, not made of the account's names.

zxcvbn estimates how many guesses a password takes from dictionaries of common
passwords, words, names and keyboard patterns, and from the account's own username
and email address given as ``user_inputs``.
"""
from __future__ import annotations

from zxcvbn import zxcvbn

MIN_LENGTH = 8
#: zxcvbn's scale is 0-4; 2 means at least 10^6 guesses, far beyond what the sign-in
#: rate limit lets an attacker try online.
MIN_SCORE = 2
#: zxcvbn refuses longer input; what follows the first 72 characters only adds strength.
_ZXCVBN_MAX = 72


def _names(username: str, email: str) -> list[str]:
    local_part = email.partition("@")[0]
    return [name for name in (username.casefold(), local_part.casefold()) if len(name) >= 3]


def password_problem(password: str, username: str = "", email: str = "") -> str | None:
    """Why ``password`` will not do for this account, in words for the form; None if it will."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    folded = password.casefold()
    names = _names(username, email)
    if any(name in folded or folded in name for name in names):
        return "Do not build your password from your username or email address."
    verdict = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=names)
    if any(match.get("dictionary_name") == "user_inputs" and len(match["token"]) >= 3
           for match in verdict["sequence"]):
        return "Do not build your password from your username or email address."
    if verdict["score"] < MIN_SCORE:
        warning = verdict["feedback"]["warning"] or "This password is too easy to guess."
        return f"{warning.rstrip('.')}. Choose a less common password: several unrelated words work well."
    return None
