"""The local API as a WSGI application: a small route table over one :class:`~edge_runtime.EdgeRuntime`.

Every answer is JSON (``/metrics`` excepted). Errors are ``{"error": {"status", "message", "field"?}}`` with a
status code that says whose fault it was: 400 bad input (naming the field), 404 unknown model, view, stream or
route, 405 wrong method, 413 body too large, 415 a POST body that is not declared JSON, 503 runtime closed, and
500 for anything unexpected — whose details go to the server log only, never into the response.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from edge_runtime._errors import (
    BackendUnavailableError,
    ConfigError,
    EdgeRuntimeError,
    ModelInputError,
    ModelNotFoundError,
    RowValidationError,
    StoreClosedError,
    UnknownNameError,
)
from edge_runtime.server._metrics import ApiMetrics

if TYPE_CHECKING:
    from edge_runtime.serving import EdgeRuntime

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

#: Default largest request body accepted (bytes): a batch of a few thousand entity rows.
DEFAULT_MAX_BODY = 4 * 1024 * 1024

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: Methods counted by name in the metrics; anything else a client invents is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PREDICT_KEYS = frozenset({"entity_rows", "request_data", "inputs", "mode"})
_NAME = "[A-Za-z0-9_.\\-]+"


class ApiError(Exception):
    """An error answer: HTTP status, message, and the request field at fault (if one is)."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)


class _Request:
    __slots__ = ("environ", "method", "params", "path")

    def __init__(self, environ: Environ, params: dict[str, str]) -> None:
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        self.path = environ.get("PATH_INFO", "") or "/"
        self.params = params


Handler = Callable[["LocalApi", _Request], tuple[int, Any]]


def _route(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{_NAME})", template) + "$")


class LocalApi:
    """The WSGI application of ``edge-runtime serve``; call it with ``(environ, start_response)``.

    ``allowed_hosts``: Host header names (without port) accepted; requests naming another host get 421, which
    keeps web pages from reaching a localhost API through DNS rebinding. ``None`` accepts any host (for
    ``--allow-remote`` and Unix sockets).
    """

    def __init__(
        self,
        runtime: EdgeRuntime,
        *,
        metrics: ApiMetrics | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        allowed_hosts: Iterable[str] | None = ("localhost", "127.0.0.1", "::1"),
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics or ApiMetrics()
        self.max_body = max_body
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self._routes: list[tuple[str, re.Pattern[str], dict[str, Handler]]] = [
            ("/healthz", _route("/healthz"), {"GET": LocalApi._healthz}),
            ("/metrics", _route("/metrics"), {"GET": LocalApi._metrics}),
            ("/v1/predict/{model}", _route("/v1/predict/{model}"), {"POST": LocalApi._predict}),
            ("/v1/features", _route("/v1/features"), {"GET": LocalApi._get_features}),
            ("/v1/features/{view}", _route("/v1/features/{view}"), {"POST": LocalApi._write_features}),
            ("/v1/events/{stream}", _route("/v1/events/{stream}"), {"POST": LocalApi._push_events}),
        ]

    # --- WSGI ----------------------------------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        """Answer one request."""
        template = "(unmatched)"
        headers: list[tuple[str, str]] = []
        try:
            self._check_host(environ)
            path = environ.get("PATH_INFO", "") or "/"
            method = environ.get("REQUEST_METHOD", "GET").upper()
            for tmpl, pattern, methods in self._routes:
                m = pattern.match(path)
                if m is None:
                    continue
                template = tmpl
                handler = methods.get(method)
                if handler is None:
                    headers.append(("Allow", ", ".join(sorted(methods))))
                    raise ApiError(405, f"{method} is not allowed on {tmpl}; use {', '.join(sorted(methods))}")
                request = _Request(environ, m.groupdict())
                status, payload = handler(self, request)
                break
            else:
                raise ApiError(404, f"no such endpoint {path!r}; see docs/local-api.md")
        except ApiError as exc:
            status, payload = exc.status, _error_body(exc)
        except Exception as exc:  # every library error becomes a clean answer; see _translate
            err = _translate(exc)
            status, payload = err.status, _error_body(err)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        self.metrics.request(method if method in _METHODS else "other", template, status)
        if isinstance(payload, str):
            body = payload.encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        else:
            body = json.dumps(_finite(payload), separators=(",", ":"), allow_nan=False, default=_plain).encode()
            ctype = "application/json"
        headers += [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        start_response(f"{status} {_STATUS_TEXT.get(status, 'Error')}", headers)
        return [body]

    def _check_host(self, environ: Environ) -> None:
        if self.allowed_hosts is None:
            return
        host = environ.get("HTTP_HOST")
        if not host:
            return  # HTTP/1.0 clients send none; a browser always does
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name not in self.allowed_hosts:
            raise ApiError(421, f"this API answers only for {', '.join(sorted(self.allowed_hosts))}", field="Host")

    # --- endpoints -----------------------------------------------------------------------------------------------

    def _healthz(self, request: _Request) -> tuple[int, Any]:
        rt = self.runtime
        try:
            rt.features.stats()  # first: it says StoreClosedError clearly once the runtime is closed
            models = {name: rt.models.active_version(name) for name in rt.models.names()}
            store = "open"
        except StoreClosedError:
            models, store = {}, "closed"
        active = {k: v for k, v in models.items() if v is not None}
        ok = store == "open" and bool(active)
        body = {"status": "ok" if ok else "unavailable", "store": store, "models": active}
        if not active and store == "open":
            body["reason"] = "no model has an active version"
        return (200 if ok else 503), body

    def _metrics(self, request: _Request) -> tuple[int, Any]:
        rt = self.runtime
        active = {name: rt.models.active_version(name) for name in rt.models.names()}
        return 200, self.metrics.render(feature_stats=rt.features.stats(), active=active)

    def _predict(self, request: _Request) -> tuple[int, Any]:
        model = request.params["model"]
        body = self._json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object with entity_rows, request_data, inputs, mode")
        unknown = sorted(set(body) - _PREDICT_KEYS)
        if unknown:
            raise ApiError(
                400,
                f"unknown field {unknown[0]!r}; expected some of {', '.join(sorted(_PREDICT_KEYS))}",
                field=unknown[0],
            )
        mode = body.get("mode")
        if mode is not None and not isinstance(mode, str):
            raise ApiError(400, "mode must be a string: online | precomputed | cached | tensors", field="mode")
        inputs = body.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise ApiError(400, "inputs must be an object of input name -> nested lists", field="inputs")
        entity_rows = body.get("entity_rows")
        if entity_rows is None and inputs is None and mode != "tensors":
            raise ApiError(400, "entity_rows is required (a list of objects with the join keys)", field="entity_rows")
        try:
            if inputs is not None:
                inputs = coerce_inputs(self.runtime, model, inputs)
            prediction = self.runtime.predict(
                model, entity_rows=entity_rows, request_data=body.get("request_data"), inputs=inputs, mode=mode
            )
        except ModelNotFoundError as exc:
            raise ApiError(404, str(exc), field="model") from exc
        except ConfigError as exc:
            # an unknown mode, or a mode this model is not configured for (precomputed without a prediction view)
            raise ApiError(400, str(exc), field="mode") from exc
        except ModelInputError as exc:
            if inputs is not None or mode == "tensors":
                field = "inputs"
            else:
                field = "request_data" if "request_data" in str(exc) else "entity_rows"
            raise ApiError(400, str(exc), field=field) from exc
        except RowValidationError as exc:
            base = exc.target if exc.target in ("entity_rows", "request_data") else "entity_rows"
            raise ApiError(400, str(exc), field=_row_field(exc, base)) from exc
        self.metrics.prediction(
            prediction.model, prediction.mode, len(prediction), sum(prediction.cached), prediction.latency_s
        )
        return 200, prediction.to_dict()

    def _get_features(self, request: _Request) -> tuple[int, Any]:
        pairs = parse_qsl(request.environ.get("QUERY_STRING", ""), keep_blank_values=True)
        refs: list[str] = []
        columns: dict[str, list[Any]] = {}
        for key, value in pairs:
            if key == "features":
                refs.extend(r.strip() for r in value.split(",") if r.strip())
            else:
                columns.setdefault(key, []).append(_query_value(value))
        if not refs:
            raise ApiError(400, "features is required: features=view:feature[,view:feature...]", field="features")
        bad = next((r for r in refs if r.count(":") != 1), None)
        if bad is not None:
            raise ApiError(400, f"feature ref {bad!r} must be 'view:feature'", field="features")
        if not columns:
            raise ApiError(400, "give the entity's join keys as query parameters, e.g. user_id=1", field="entity")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ApiError(400, "every entity key must be repeated the same number of times", field="entity")
        try:
            response = self.runtime.features.get_online_features(refs, columns, full_feature_names=True)
        except UnknownNameError as exc:
            status = 404 if exc.kind in ("feature view", "view") else 400
            raise ApiError(status, str(exc), field="features") from exc
        except RowValidationError as exc:
            raise ApiError(400, str(exc), field=exc.column or "entity") from exc
        statuses = response.statuses
        features = {}
        for ref, name in zip(refs, response.feature_names, strict=True):
            features[ref] = {
                "values": list(response.values(name)),
                "statuses": [s.value for s in statuses[name]],
            }
        return 200, {"entities": columns, "features": features}

    def _write_features(self, request: _Request) -> tuple[int, Any]:
        view = request.params["view"]
        rows = self._rows(request)
        try:
            n = self.runtime.features.write_to_online_store(view, rows)
        except UnknownNameError as exc:
            raise ApiError(404, str(exc), field="view") from exc
        except RowValidationError as exc:
            raise ApiError(400, str(exc), field=_row_field(exc)) from exc
        self.metrics.written("view", view, n)
        return 200, {"view": view, "written": n}

    def _push_events(self, request: _Request) -> tuple[int, Any]:
        stream = request.params["stream"]
        rows = self._rows(request)
        try:
            n = self.runtime.features.push_events(stream, rows)
        except UnknownNameError as exc:
            raise ApiError(404, str(exc), field="stream") from exc
        except RowValidationError as exc:
            raise ApiError(400, str(exc), field=_row_field(exc)) from exc
        self.metrics.written("stream", stream, n)
        return 200, {"stream": stream, "pushed": n}

    # --- request bodies ------------------------------------------------------------------------------------------

    def _rows(self, request: _Request) -> list[dict[str, Any]]:
        """``{"rows": [...]}`` with ``event_timestamp`` (epoch seconds) defaulting to the runtime's clock."""
        body = self._json_body(request)
        if not isinstance(body, dict) or set(body) != {"rows"}:
            raise ApiError(400, 'the body must be {"rows": [{...}, ...]}', field="rows")
        rows = body["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "rows must be a list of objects", field="rows")
        now = self.runtime.now_us() / 1_000_000
        return [r if "event_timestamp" in r else {**r, "event_timestamp": now} for r in rows]

    def _json_body(self, request: _Request) -> Any:
        environ = request.environ
        ctype = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
        # Browsers may POST text/plain or form bodies cross-origin without a preflight; JSON they may not.
        if ctype != "application/json":
            raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'", field="Content-Type")
        raw_len = environ.get("CONTENT_LENGTH") or ""
        try:
            length = int(raw_len)
        except ValueError:
            raise ApiError(411, "a Content-Length header is required", field="Content-Length") from None
        if length > self.max_body:
            raise ApiError(413, f"the body is {length} bytes; at most {self.max_body} are accepted")
        data = environ["wsgi.input"].read(length) if length > 0 else b""
        try:
            return json.loads(data)
        except RecursionError:
            raise ApiError(400, "the body is not valid JSON: nested too deeply", field="body") from None
        except ValueError as exc:  # also UnicodeDecodeError, and integers longer than Python parses (4300 digits)
            raise ApiError(400, f"the body is not valid JSON: {exc}", field="body") from None


def coerce_inputs(runtime: EdgeRuntime, model: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON tensors (nested lists) as arrays of the dtype the model declares for each input: JSON cannot say
    float32, and ``[[0, 1]]`` would otherwise arrive as int64. Names the model does not take pass through as given
    (``predict`` then reports what it expects)."""
    import numpy as np

    specs = {spec.name: spec for spec in runtime.models.active(model).manifest.inputs}
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        spec = specs.get(name)
        if spec is None:
            out[name] = value
            continue
        try:
            out[name] = np.asarray(value, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise ApiError(
                400, f"input {name!r} must be a nested list of numbers ({spec.dtype}): {exc}", field=f"inputs.{name}"
            ) from None
    return out


def _row_field(exc: RowValidationError, base: str = "rows") -> str:
    """``rows[3].amount``: the body field a row error points at."""
    if exc.row is not None and exc.column is not None:
        return f"{base}[{exc.row}].{exc.column}"
    if exc.row is not None:
        return f"{base}[{exc.row}]"
    return base


def _query_value(value: str) -> Any:
    """Query values are strings; an integer-looking one is an integer (join keys are usually int64)."""
    if re.fullmatch(r"-?[0-9]{1,18}", value):
        return int(value)
    return value


def _translate(exc: Exception) -> ApiError:
    """Map an exception that escaped a handler to an answer that names no internals."""
    if isinstance(exc, (ModelNotFoundError, UnknownNameError)):
        return ApiError(404, str(exc))
    if isinstance(exc, (StoreClosedError, BackendUnavailableError)):
        log.warning("local API: %s", exc)
        return ApiError(503, "the runtime is not available right now")
    if isinstance(exc, EdgeRuntimeError) and isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    incident = uuid.uuid4().hex[:12]
    log.error("local API: unexpected error (incident %s)", incident, exc_info=exc)
    return ApiError(500, f"internal error; the server log has details under incident {incident}")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (vector features) as plain JSON; bytes as hex."""
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _error_body(err: ApiError) -> dict[str, Any]:
    detail: dict[str, Any] = {"status": err.status, "message": err.message}
    if err.field is not None:
        detail["field"] = err.field
    return {"error": detail}


def _finite(value: Any) -> Any:
    """JSON has no NaN: NaN and infinities (a missing precomputed prediction) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    return value
