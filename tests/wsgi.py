"""Call a WSGI app (optuna-dashboard's) in process, as optuna-dashboard's own tests do."""

from __future__ import annotations

import io
from typing import Any
import wsgiref.util


def call_wsgi(app: Any, path: str, query: str = "") -> tuple[str, bytes]:
    """GET ``path`` from a WSGI app in process; return (status, body)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(b""),
    }
    wsgiref.util.setup_testing_defaults(environ)
    captured: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"] = status
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], body
