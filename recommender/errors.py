"""Small named exceptions. Each message says what is wrong and what to do.

Error text often ends up where more people can read it than the operator who wrote the
configuration (logs, `/readyz`, the CLI's output pasted into a ticket), and libraries put
URLs with their credentials into their messages: `redact` hides them, and `first_line`,
which every one-line error of the project goes through, applies it.
"""

from __future__ import annotations

import re


class RecommenderError(Exception):
    """Base class of every error a user can fix; the CLI prints it as one line."""


class DataError(RecommenderError):
    """A bank data directory or file does not meet the data contract."""


class ConfigError(RecommenderError):
    """An option or configuration value is invalid."""


class NotFittedError(RecommenderError):
    """A model or encoder was used before `fit` was called."""


class ModelFitError(RecommenderError):
    """Fitting produced an unusable model (e.g. NaN scores)."""


HIDDEN = "***"
# scheme://user:password@host: the user information runs to the last @ before a blank,
# since libraries accept passwords with unencoded / ? # @ : in them; a user part without
# a colon may itself be a token (https://TOKEN@host), so it is hidden whole; an @ after
# a path (https://host/a@b) is left alone.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^\s]*)@(?=[^\s@]*(?:\s|$))"
)
# password=... in a query string or a libpq/ODBC style connection string
_KEY_VALUE_SECRETS = re.compile(
    r"(?i)\b(?P<name>password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
    r"(?P<eq>\s*=\s*)(?P<secret>[^&;,\s'\")]+)"
)
# characters a terminal or log viewer would interpret (line breaks, escape sequences)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact(text: str) -> str:
    """`text` with the passwords of URLs (`scheme://user:***@host`) and `password=` style
    values hidden; the user and host stay, as they are what an operator needs to fix a
    connection."""
    text = _URL_CREDENTIALS.sub(_hide_user_information, text)
    return _KEY_VALUE_SECRETS.sub(lambda m: f"{m['name']}{m['eq']}{HIDDEN}", text)


def _hide_user_information(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    if "/" in user:  # an @ in a path (https://host/a@b), not user information
        return match[0]
    if not colon:  # https://TOKEN@host: the user part may itself be the secret
        return f"{match['scheme']}{HIDDEN}@"
    return f"{match['scheme']}{user}:{HIDDEN}@"


def one_line(text: str) -> str:
    """The first non-blank line of `text`, credentials hidden, other control characters
    (which a terminal or log viewer would interpret) removed."""
    for line in str(text).splitlines():
        if line.strip():
            return CONTROL_CHARACTERS.sub("", redact(line.strip()))
    return ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors; any
    credentials in it are hidden."""
    return one_line(str(exc)) or type(exc).__name__
