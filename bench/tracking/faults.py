"""What a failed send means: the three classes of tracking faults and the one line each is told with.

======================================================  ========  ==============================================
fault                                                   class     what the sender does
======================================================  ========  ==============================================
no answer: connection refused or dropped, timeout       retry     waits with backoff (1-10 s), tells the outage
5xx, 429 (from the server or a proxy)                   retry     once and its end; every record kept in order;
                                                                  one record answered 5xx 30 times: hold
401, 403 (expired token, wrong credentials)             hold      stops sending this spool, keeps every record
413 (a proxy's body limit, nginx's 1 MB default)        hold      and file, one line saying why and what to do;
other 4xx, a client-side MLflow error, an ``OSError``   hold      ``svbench sync OUT`` sends it after the fix
of the artifact store (full disk, permissions)
the run is unknown to the server (404)                  hold
the server says the data is invalid (400               reject    sets the record aside (its files moved to
``INVALID_PARAMETER_VALUE``)                                      ``rejected/<id>/``, never deleted), goes on
======================================================  ========  ==============================================

A fault is classified from what MLflow's public client raises: ``requests`` exceptions (artifact uploads carry
their response and status), ``RestException`` (the server's own JSON error, whose code maps to an HTTP status),
and ``MlflowException`` raised around a transport error (its cause is the ``requests`` exception) or around a
non-JSON error page (MLflow's message then states the page's status: ``failed with error code 413``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import requests
from mlflow.exceptions import MlflowException, RestException


class Fault(enum.Enum):
    RETRY = "retry"
    HOLD = "hold"
    REJECT = "reject"


@dataclass(frozen=True)
class Classified:
    fault: Fault
    why: str  # one line: what happened and what to do
    status: int | None = None  # the HTTP status the server (or a proxy) answered, when it answered


class RunNotFound(Exception):
    """The tracking server does not know the run: another server, or the run was deleted."""


STATUS_IN_MESSAGE = re.compile(r"failed with error code (\d{3})")  # MLflow's message for a non-JSON error page


def classify(exc: BaseException) -> Classified:
    if isinstance(exc, RunNotFound):
        return Classified(Fault.HOLD, f"{exc} (is MLFLOW_TRACKING_URI the server the run was made on?)")
    transport = _transport_error(exc)
    if transport is not None:
        return Classified(Fault.RETRY, _first_line(transport))
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _by_status(exc.response.status_code, _first_line(exc))
    if isinstance(exc, MlflowException):
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            return Classified(Fault.REJECT, f"the server refuses the data ({_first_line(exc)})")
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return Classified(Fault.HOLD, f"{_first_line(exc)} (is MLFLOW_TRACKING_URI the server the run was "
                                          "made on?)")
        if m := STATUS_IN_MESSAGE.search(str(exc)):
            return _by_status(int(m.group(1)), _first_line(exc))
        if isinstance(exc, RestException) or exc.error_code != "INTERNAL_ERROR":
            # the server's answer, or a local store's coded error (sqlite's "database is locked": 503)
            return _by_status(exc.get_http_status_code(), _first_line(exc))
    if isinstance(exc, OSError):
        return Classified(Fault.HOLD, f"the artifact store or the spool cannot be written ({_first_line(exc)}); "
                                      "free space or fix the permissions")
    return Classified(Fault.HOLD, f"{type(exc).__name__}: {_first_line(exc)}")


def _transport_error(exc: BaseException) -> BaseException | None:
    """The connection error or timeout behind ``exc`` (itself, or the cause MLflow wrapped), if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                            requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _by_status(status: int, text: str) -> Classified:
    if status >= 500 or status == 429:
        return Classified(Fault.RETRY, f"HTTP {status}: {text}", status)
    if status == 413:
        return Classified(Fault.HOLD, "HTTP 413: a proxy in front of the server refused the request body as too "
                                      "large (nginx's client_max_body_size is 1 MB by default); raise that "
                                      "limit", status)
    if status in (401, 403):
        return Classified(Fault.HOLD, f"HTTP {status}: the server refuses the credentials ({text}); renew the "
                                      "token or MLFLOW_TRACKING_USERNAME/PASSWORD", status)
    return Classified(Fault.HOLD, f"HTTP {status}: {text}", status)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
