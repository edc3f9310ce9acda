"""The worker's log lines on stderr: text, or one JSON object per line (`--log-format json`)
with the keys the scheduler's JSON lines use (time, level, logger, message), so that one
stream of a `yaie serve` stack parses as a whole."""

from __future__ import annotations

import json
import logging
import sys

LOG_FORMATS = ("text", "json")
QUIET_LOGGERS = ("httpx", "httpx2")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_worker_logging(level: str, log_format: str) -> None:
    """The root logger on stderr in log_format (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET_LOGGERS:  # a line per HTTP request of a hub download is noise
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.root.level))
    if log_format == "json":  # a progress bar would break the stream into non-JSON lines
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
