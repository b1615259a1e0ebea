"""What a service process sets up first: its log lines cannot be forged, and the files
it creates are its own.

Log messages carry values the caller chose (a customer id, an experiment variant's model
reference, a database's error text). A newline in one of them would start a line that
looks like the service's own (`INFO: reload succeeded`), and escape sequences would drive
the operator's terminal. So every record that reaches a handler, the service's and
uvicorn's, is rewritten as one line: control characters escaped (`\\n`, `\\x1b`), a
traceback folded into the same line, and passwords in URLs hidden. `json` logs
(RECOMMENDER_LOG_FORMAT=json) give one JSON object per line instead.

The service writes the audit trail (`events.db`), events kept at shutdown (`spill/`) and
the local model copy (`models/*/bundle.pkl`, which is unpickled at start-up): with the
process umask 077 each is created readable and writable by the service's user only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from recommender.errors import CONTROL_CHARACTERS, redact

SERVICE_LOGGERS = ("serving", "recommender", "training")
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
PRIVATE_UMASK = 0o077
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` on one line: newlines and other control characters as visible escapes."""
    return CONTROL_CHARACTERS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class OneLine(logging.Filter):
    """Rewrites a record in place as one escaped, redacted line (its traceback folded in):
    as a handler filter it applies to every record the handler writes, whichever logger
    it came from. Idempotent, so a record passing two handlers is not escaped twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "one_line", False):
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            message = f"{message} | {record.exc_text}"
        if record.stack_info:
            message = f"{message} | {record.stack_info}"
        record.msg = escape_controls(redact(message))
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.one_line = True
        # uvicorn's formatters colour `color_message` when present: keep it in step
        if hasattr(record, "color_message"):
            record.color_message = record.msg
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        return json.dumps(entry, ensure_ascii=True)


def private_files() -> None:
    """Files and directories the process creates from now on: owner only (0600 / 0700)."""
    os.umask(PRIVATE_UMASK)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> logging.Handler:
    """The service's loggers write INFO and above to stderr through one handler; every
    handler (ours, uvicorn's, any already on the root logger) gets the `OneLine` filter.
    Calling it again replaces our handler instead of adding a second one."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "recommender_handler", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.recommender_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
    for logger in [root, *(logging.getLogger(n) for n in SERVER_LOGGERS)]:
        for each in logger.handlers:
            if not any(isinstance(f, OneLine) for f in each.filters):
                each.addFilter(OneLine())
            if fmt == "json" and each is not handler:
                each.setFormatter(JsonFormatter())
    return handler


def prepare_process(fmt: str = "text") -> None:
    """What every service process does before it creates a file or logs a request."""
    private_files()
    configure_logging(fmt)
