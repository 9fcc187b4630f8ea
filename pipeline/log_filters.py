"""Logging filters on the handlers Hydra configures (`conf/config.yaml`: `hydra.job_logging`, `hydra.hydra_logging`).

An HTTP client logs a line per request at INFO (huggingface_hub's client as `httpx2`: `HTTP Request: HEAD ...`, 70-150
per run). The filter drops such lines by what they say, not by the logger's name, and raises the level of the logger
that logged one to WARNING, so that it stops formatting them.
"""

from __future__ import annotations

import logging
import re

# `HTTP Request: GET https://...` (httpx), `GET https://... "HTTP/1.1 200 OK"`, `https://host:443 "HEAD /x HTTP/1.1" 200`
HTTP_REQUEST = re.compile(r"^HTTP Request: |\b(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (https?://\S+|/\S* HTTP/\d)")


class NoHttpRequests(logging.Filter):
    """Below WARNING, a record that reads as an HTTP request line is dropped, and its logger set to WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not HTTP_REQUEST.search(record.getMessage()):
            return True
        logging.getLogger(record.name).setLevel(logging.WARNING)
        return False
