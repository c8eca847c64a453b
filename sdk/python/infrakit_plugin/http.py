"""Outbound HTTP through the host, over `wasi:http`.

The host lets a plugin reach only the targets its grant file allows (``[http] allow``); a
refused request raises `Denied` naming the URL. Build a plugin that uses this module against
a world that imports `wasi:http`: ``-w flavor-plugin-http`` or ``-w instance-plugin-http``.

::

    from infrakit_plugin import http

    server = http.post(
        "https://api.example.com/servers",
        json={"size": "small"},
        headers={"authorization": "Bearer t0ken"},
        timeout=10,
    ).raise_for_status().json()

Every error is an `HttpError`, itself a `PluginError`, so one that is not caught becomes the
call's error answer, of the kind a host expects: a timeout, a refused connection, a failed
name lookup and a 5xx or 429 status are `transient` (retried with back-off), a 404 status is
`not-found`, anything else `other`.

In native tests (pytest, no wasm) requests go to ``testing.http``, a function from `Request`
to `Response` that the test sets; without one a request raises `Unsupported`.
"""

from __future__ import annotations

import dataclasses
import json as _json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import PluginError

__all__ = [
    "ConnectionFailed",
    "Denied",
    "HttpError",
    "InvalidUrl",
    "Request",
    "Response",
    "StatusError",
    "Timeout",
    "TooLarge",
    "Unsupported",
    "delete",
    "get",
    "patch",
    "post",
    "put",
    "request",
]

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]


# --- Errors -----------------------------------------------------------------------------------


class HttpError(PluginError):
    """A request that did not give a response, or gave one the caller refused."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class InvalidUrl(HttpError):
    """The URL cannot be used: no scheme, a scheme other than http or https, no host."""


class Denied(HttpError):
    """The host refused the request: the target (or this method, path or body) is not granted
    to the plugin, or the name resolves to an address the grant blocks."""


class Timeout(HttpError):
    """Connecting, sending, or waiting for the response took too long."""

    kind = "transient"


class ConnectionFailed(HttpError):
    """The name did not resolve, or the connection was refused or broke."""

    kind = "transient"


class TooLarge(HttpError):
    """The response body is larger than the plugin's grant allows."""


class Unsupported(HttpError):
    """No HTTP here: a native test without ``testing.http``, or a component built against a
    world without `wasi:http`."""


class StatusError(HttpError):
    """`Response.raise_for_status` on a status outside 200-299. Its kind follows the status:
    5xx and 429 are `transient`, 404 `not-found`, the rest `other`."""

    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(f"HTTP {status} from {url}: {message}" if url else f"HTTP {status}: {message}", url)
        self.status = status
        if status >= 500 or status == 429:
            self.kind = "transient"
        elif status == 404:
            self.kind = "not-found"


# --- Requests and responses -------------------------------------------------------------------


@dataclasses.dataclass
class Request:
    """A request as the host receives it (and as ``testing.http`` sees it)."""

    method: str
    url: str
    headers: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    timeout: Optional[float] = None

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (any case), or None."""
        return _find(self.headers, name)


@dataclasses.dataclass
class Response:
    """A response: its status, headers (in order, names lower-case) and whole body."""

    status: int
    headers: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    url: str = ""

    @property
    def text(self) -> str:
        """The body as text (UTF-8, invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; `HttpError` when it is not."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise HttpError(f"HTTP {self.status} from {self.url}: body is not JSON: {e}", self.url) from None

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (any case), or None."""
        return _find(self.headers, name)

    def raise_for_status(self) -> "Response":
        """This response when its status is 2xx; otherwise raises `StatusError` with the start
        of the body."""
        if 200 <= self.status < 300:
            return self
        raise StatusError(self.status, self.text[:200], self.url)


def _find(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


def request(
    method: str,
    url: str,
    *,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    json: Any = None,
    timeout: Optional[float] = None,
) -> Response:
    """Sends one request and reads the whole response.

    `body` is bytes or text (sent as UTF-8); `json` a value sent as a JSON body with
    ``content-type: application/json``. The body is sent with its ``content-length`` (not
    chunked). `timeout` in seconds bounds connecting, the first byte and each gap between bytes.
    A status that is not 2xx is a response, not an error: see `Response.raise_for_status`.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if json is not None:
        if body is not None:
            raise ValueError("give body or json, not both")
        body = _json.dumps(json).encode()
        if _find(pairs, "content-type") is None:
            pairs.append(("content-type", "application/json"))
    data = body.encode() if isinstance(body, str) else (body or b"")
    req = Request(method.upper(), url, [(str(k), str(v)) for k, v in pairs], data, timeout)
    parts = _split(url)  # a bad URL is refused natively just as in a component
    from . import _host, testing

    if _host() is None:
        if testing.http is None:
            raise Unsupported(
                f"HTTP is not available here ({req.method} {url}): in a native test, set "
                "infrakit_plugin.testing.http to a function from Request to Response",
                url,
            )
        return testing.http(req)
    return _wasi_send(req, parts)


def get(url: str, **kwargs: Any) -> Response:
    """``request("GET", url, ...)``."""
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> Response:
    """``request("POST", url, ...)``."""
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> Response:
    """``request("PUT", url, ...)``."""
    return request("PUT", url, **kwargs)


def patch(url: str, **kwargs: Any) -> Response:
    """``request("PATCH", url, ...)``."""
    return request("PATCH", url, **kwargs)


def delete(url: str, **kwargs: Any) -> Response:
    """``request("DELETE", url, ...)``."""
    return request("DELETE", url, **kwargs)


def _split(url: str) -> Tuple[bool, str, str]:
    """(https, authority, path-and-query) of `url`, or `InvalidUrl`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidUrl(f"invalid URL {url!r}: no scheme", url)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrl(f"invalid URL {url!r}: scheme {scheme!r} is not http or https", url)
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority:
        raise InvalidUrl(f"invalid URL {url!r}: no host", url)
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    return scheme == "https", authority, path


# --- Inside a component: wasi:http ------------------------------------------------------------

# The bindings componentize-py generates, imported with the module (while the component is
# built); None natively, or in a component whose world does not import wasi:http.
try:
    from componentize_py_types import Err as _Err, Ok as _Ok  # type: ignore[import-not-found]
    from wit_world.imports import outgoing_handler as _handler  # type: ignore[import-not-found]
    from wit_world.imports import streams as _streams  # type: ignore[import-not-found]
    from wit_world.imports import wasi_http_types as _types  # type: ignore[import-not-found]

    _wasi: Optional[Tuple[Any, ...]] = (_Err, _Ok, _handler, _streams, _types)
except ImportError:
    _wasi = None

# ErrorCode variants (by their binding's class name) and the exception each becomes.
_CODES: Dict[str, Tuple[type, str]] = {
    "HttpRequestDenied": (Denied, "not granted to this plugin, or blocked by its grant's rules"),
    "DestinationIpProhibited": (Denied, "resolves to an address the grant blocks"),
    "DestinationIpUnroutable": (Denied, "resolves to an address the grant blocks"),
    "DnsTimeout": (Timeout, "name lookup timed out"),
    "DnsError": (ConnectionFailed, "name lookup failed"),
    "DestinationNotFound": (ConnectionFailed, "no such host"),
    "DestinationUnavailable": (ConnectionFailed, "destination unavailable"),
    "ConnectionRefused": (ConnectionFailed, "connection refused"),
    "ConnectionTerminated": (ConnectionFailed, "connection closed"),
    "ConnectionTimeout": (Timeout, "connecting timed out"),
    "ConnectionReadTimeout": (Timeout, "waiting for the response timed out"),
    "HttpResponseTimeout": (Timeout, "waiting for the response timed out"),
    "ConnectionWriteTimeout": (Timeout, "sending timed out"),
    "HttpResponseBodySize": (TooLarge, "response body over the granted limit"),
}


def _from_code(code: Any, req: Request) -> HttpError:
    name = type(code).__name__.removeprefix("ErrorCode_")
    cls, what = _CODES.get(name, (HttpError, name))
    if cls is Denied:
        return Denied(
            f"HTTP request {req.method} {req.url} denied by the host: {what} (the host's log says which)",
            req.url,
        )
    detail = getattr(code, "value", None)
    suffix = f" ({detail})" if detail not in (None, "") and cls is HttpError else ""
    return cls(f"HTTP {req.method} {req.url}: {what}{suffix}", req.url)


def _wasi_send(req: Request, parts: Tuple[bool, str, str]) -> Response:
    if _wasi is None:
        raise Unsupported(
            f"HTTP is not available to this component ({req.method} {req.url}): build it "
            "against a world that imports wasi:http (-w flavor-plugin-http or -w "
            "instance-plugin-http)",
            req.url,
        )
    Err, Ok, outgoing_handler, streams, h = _wasi

    https, authority, path = parts
    entries = [
        (k.lower(), v.encode())
        for k, v in req.headers
        if k.lower() not in ("content-length", "transfer-encoding")
    ]
    # The body is in memory: say how long it is rather than sending it chunked, which simple
    # servers (Python's http.server) read as empty.
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        entries.append(("content-length", str(len(req.body)).encode()))
    try:
        fields = h.Fields.from_list(entries)
    except Err as e:
        raise HttpError(f"HTTP {req.method} {req.url}: bad header ({type(e.value).__name__})", req.url) from None

    outgoing = h.OutgoingRequest(fields)
    methods = {
        "GET": h.Method_Get,
        "HEAD": h.Method_Head,
        "POST": h.Method_Post,
        "PUT": h.Method_Put,
        "DELETE": h.Method_Delete,
        "OPTIONS": h.Method_Options,
        "PATCH": h.Method_Patch,
    }
    try:
        cls = methods.get(req.method)
        outgoing.set_method(cls() if cls else h.Method_Other(req.method))
        outgoing.set_scheme(h.Scheme_Https() if https else h.Scheme_Http())
        outgoing.set_authority(authority)
        outgoing.set_path_with_query(path)
    except Err:
        raise InvalidUrl(f"invalid request {req.method} {req.url}", req.url) from None

    body = outgoing.body()
    options = h.RequestOptions()
    if req.timeout is not None:
        ns = max(0, int(req.timeout * 1e9))
        options.set_connect_timeout(ns)
        options.set_first_byte_timeout(ns)
        options.set_between_bytes_timeout(ns)
    try:
        pending = outgoing_handler.handle(outgoing, options)
    except Err as e:
        raise _from_code(e.value, req) from None

    def refused() -> Optional[HttpError]:
        # A refused request closes its body stream: the pending response says why.
        with pending.subscribe() as ready:
            ready.block()
        got = pending.get()
        if isinstance(got, Ok) and isinstance(got.value, Err):
            return _from_code(got.value.value, req)
        return None

    # The request is handed over first and its body written after: the host reads the body
    # while the request is on its way.
    if req.body:
        stream = body.write()
        failed = None
        for at in range(0, len(req.body), 4096):
            try:
                stream.blocking_write_and_flush(req.body[at : at + 4096])
            except Err as e:
                failed = e.value
                break
        stream.__exit__(None, None, None)  # the stream must go before its body is finished
        if failed is not None:
            raise (refused() or _stream_error(failed, req, h, streams))
    try:
        h.OutgoingBody.finish(body, None)
    except Err as e:
        raise _from_code(e.value, req) from None

    with pending.subscribe() as ready:
        ready.block()
    got = pending.get()
    if not isinstance(got, Ok):
        raise HttpError(f"HTTP {req.method} {req.url}: the response was already taken", req.url)
    if isinstance(got.value, Err):
        raise _from_code(got.value.value, req)
    with got.value.value as response:
        status = response.status()
        with response.headers() as fields:
            headers = [(k, v.decode("utf-8", errors="replace")) for k, v in fields.entries()]
        incoming = response.consume()
        chunks: List[bytes] = []
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(64 * 1024))
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise _stream_error(e.value, req, h, streams) from None
        h.IncomingBody.finish(incoming).__exit__(None, None, None)
    return Response(status, headers, b"".join(chunks), req.url)


def _stream_error(e: Any, req: Request, h: Any, streams: Any) -> HttpError:
    if isinstance(e, streams.StreamError_LastOperationFailed):
        code = h.http_error_code(e.value)
        if code is not None:
            return _from_code(code, req)
        return ConnectionFailed(f"HTTP {req.method} {req.url}: {e.value.to_debug_string()}", req.url)
    return ConnectionFailed(f"HTTP {req.method} {req.url}: stream closed", req.url)
