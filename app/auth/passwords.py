"""What a new password must be: long enough, not common, not made of the account's names.

zxcvbn estimates how many guesses a password takes from dictionaries of common
passwords, words, names and keyboard patterns, and from the account's own username
and email address given as ``user_inputs``.
"""
from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import ngettext
from zxcvbn import zxcvbn

from app.i18n import N_

MIN_LENGTH = 8
#: zxcvbn's scale is 0-4; 2 means at least 10^6 guesses, far beyond what the sign-in
#: rate limit lets an attacker try online.
MIN_SCORE = 2
#: zxcvbn refuses longer input; what follows the first 72 characters only adds strength.
_ZXCVBN_MAX = 72


#: zxcvbn's warnings (zxcvbn/feedback.py): a fixed set of English sentences, each a msgid.
ZXCVBN_WARNINGS = frozenset((
    N_("Straight rows of keys are easy to guess."),
    N_("Short keyboard patterns are easy to guess."),
    N_('Repeats like "aaa" are easy to guess.'),
    N_('Repeats like "abcabcabc" are only slightly harder to guess than "abc".'),
    N_('Sequences like "abc" or "6543" are easy to guess.'),
    N_("Recent years are easy to guess."),
    N_("Dates are often easy to guess."),
    N_("This is a top-10 common password."),
    N_("This is a top-100 common password."),
    N_("This is a very common password."),
    N_("This is similar to a commonly used password."),
    N_("A word by itself is easy to guess."),
    N_("Names and surnames by themselves are easy to guess."),
    N_("Common names and surnames are easy to guess."),
))


def _warning(verdict: dict) -> str:
    """zxcvbn's warning in the user's language; one it may add later, or none, a
    general one."""
    warning = verdict["feedback"]["warning"]
    return _(warning) if warning in ZXCVBN_WARNINGS else _("This password is too easy to guess.")


def _names(username: str, email: str) -> list[str]:
    local_part = email.partition("@")[0]
    return [name for name in (username.casefold(), local_part.casefold()) if len(name) >= 3]


def password_problem(password: str, username: str = "", email: str = "") -> str | None:
    """Why ``password`` will not do for this account, in words for the form; None if it will."""
    if len(password) < MIN_LENGTH:
        return ngettext("Use at least %(num)d character.", "Use at least %(num)d characters.", MIN_LENGTH)
    folded = password.casefold()
    names = _names(username, email)
    if any(name in folded or folded in name for name in names):
        return _("Do not build your password from your username or email address.")
    verdict = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=names)
    if any(match.get("dictionary_name") == "user_inputs" and len(match["token"]) >= 3
           for match in verdict["sequence"]):
        return _("Do not build your password from your username or email address.")
    if verdict["score"] < MIN_SCORE:
        return _("%(warning)s Choose a less common password: several unrelated words work well.",
                 warning=_warning(verdict))
    return None
