"""Small named exceptions. Each message says what is wrong and what to do."""


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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
