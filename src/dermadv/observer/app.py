"""The observer web app: server-rendered pages (FastAPI + Jinja2), one image at a time, answers final.

Every URL starts with the observer's token; without a valid one nothing is served. Images are looked up by
opaque item id among the files the study wrote (its own list), never by a path from the request, through a
symbolic link or from a file with a second name (a hard link), and the answer key is never read. Images go out without ETag or Last-Modified, all of one size (see
:mod:`dermadv.observer.images`), so only their pixels differ. The app answers only its own host names, and
refuses an answer posted from another site. Routes only call :mod:`dermadv.observer.storage`; statistics
live in :mod:`dermadv.observer.analysis`.
"""

# No ``from __future__ import annotations``: FastAPI must resolve the route annotations, and its types are
# imported inside create_app (a heavy optional dependency), out of reach of deferred evaluation.
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dermadv.data.classes import CLASS_NAMES, CLASSES
from dermadv.errors import ConfigError, DataError, RunError
from dermadv.observer.storage import AnswerConflictError, InvalidAnswerError, Observer, StudyDB
from dermadv.observer.study import ITEM_ID_RE, SIDES, TOKEN_RE, Side, hash_token, load_study

if TYPE_CHECKING:
    from fastapi import FastAPI


TEMPLATES_DIR = Path(__file__).parent / "templates"

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Bind addresses that listen on every interface: they name no host a request could be checked against.
WILDCARD = ("0.0.0.0", "::", "")
#: The fields of the answer form; each must come at most once.
ANSWER_FIELDS = ("item_id", "answer", "confidence", "diagnosis")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def allowed_hosts(bind: str, names: Sequence[str] = ()) -> tuple[str, ...]:
    """Host names the app answers to: the bound host (every loopback name for a loopback host) and ``names``.

    A request with another ``Host`` header is refused, which defeats DNS rebinding; a wildcard bind needs
    ``names``, the names in the observers' links.
    """
    hosts = [n.strip() for n in names if n.strip()]
    if bind in WILDCARD:
        if not hosts:
            raise ConfigError(
                f"--host {bind or repr(bind)} listens on every interface; also pass --allowed-host NAME with the "
                "name or address in the observers' links (repeat it for several)"
            )
    else:
        hosts.append(bind)
    if bind in LOOPBACK:
        hosts += LOOPBACK
    # Starlette compares the Host header's host part, which keeps the brackets of an IPv6 literal.
    bracketed = [f"[{h}]" for h in hosts if ":" in h and not h.startswith("[")]
    return tuple(dict.fromkeys(h.lower() for h in [*hosts, *bracketed]))


def same_origin(scheme: str, host: str, origin: str | None, referer: str | None) -> bool:
    """Whether a submission comes from this site: its ``Origin`` (else ``Referer``) names ``scheme://host``.

    A browser sends ``Origin`` with every form POST (``null`` when it may not say, which is refused); a
    request with neither header comes from no browser, so no other site can have forged it.
    """
    expected = f"{scheme}://{host}".lower()
    if origin is not None:
        return origin.lower() == expected
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == expected
    return True


def answer_fields(items: Sequence[tuple[str, Any]]) -> dict[str, str]:
    """The answer form's fields from the submitted ``(name, value)`` pairs; each known field at most once."""
    fields: dict[str, str] = {}
    for name, value in items:
        if name not in ANSWER_FIELDS:
            raise InvalidAnswerError(f"unknown field {name[:40]!r}; the form sends {', '.join(ANSWER_FIELDS)}")
        if name in fields:
            raise InvalidAnswerError(f"field {name!r} was sent more than once; send each answer field once")
        if not isinstance(value, str):
            raise InvalidAnswerError(f"field {name!r} must be text, not a file")
        fields[name] = value
    return fields


def create_app(study_dir: str | os.PathLike[str], *, hosts: Sequence[str] = LOOPBACK) -> "FastAPI":
    """Build the app for one study folder (the database must exist: the folder comes from ``observer create``).

    ``hosts`` are the host names it answers to (see :func:`allowed_hosts`).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from fastapi.templating import Jinja2Templates
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    study = load_study(study_dir)
    if not study.db_path.exists():
        raise RunError(f"answers database {study.db_path} not found; recreate the study with `observer create`")
    db = StudyDB(study.db_path)
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app = FastAPI(title="dermadv observer study", docs_url=None, redoc_url=None, openapi_url=None)
    # The middleware added last runs first: HEAD becomes GET, then the Host header is checked.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)
    app.add_middleware(HeadAsGet)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        context = {"design": study.design, "n_items": study.n_items, "nonce": nonce, **context}
        response = templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        return response

    def error(request: Request, status_code: int, message: str, token: str | None = None) -> HTMLResponse:
        return page(request, "error.html", status_code, message=message, token=token)

    def observer_for(token: str) -> Observer:
        observer = db.observer_by_token_hash(hash_token(token)) if TOKEN_RE.fullmatch(token) else None
        if observer is None:
            raise HTTPException(404, "This link is not valid. Ask the study team for your personal link.")
        return observer

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        # The token is in the URL: keep it out of Referer headers, caches and other sites' frames.
        # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with our own form.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "Page not found."
        return error(request, exc.status_code, str(message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error(request, 422, "The answer was incomplete; go back and answer every required question.")

    @app.get("/s/{token}", response_class=HTMLResponse)
    def start(request: Request, token: str) -> Response:
        observer = observer_for(token)
        return page(
            request, "start.html", token=token, observer=observer.name, progress=db.progress(observer.observer_id)
        )

    @app.get("/s/{token}/rate", response_class=HTMLResponse)
    def rate(request: Request, token: str) -> Response:
        observer = observer_for(token)
        item_id = db.serve_next(observer.observer_id)
        if item_id is None:
            return RedirectResponse(f"/s/{token}/done", status_code=303)
        return page(
            request,
            "rate.html",
            token=token,
            item_id=item_id,
            sides=SIDES,
            progress=db.progress(observer.observer_id),
            classes=[(c, CLASS_NAMES[c]) for c in CLASSES],
        )

    @app.post("/s/{token}/answer")
    async def answer(request: Request, token: str) -> Response:
        observer = await run_in_threadpool(observer_for, token)
        origin, referer = request.headers.get("origin"), request.headers.get("referer")
        if not same_origin(request.url.scheme, request.headers.get("host", ""), origin, referer):
            message = "This answer was sent from another web page and was not saved; answer on the study page."
            return error(request, 403, message, token)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            message = f"An answer is sent with the form on the rating page, not as {content_type or 'an empty body'}."
            return error(request, 415, message, token)
        try:
            fields = answer_fields(list((await request.form()).multi_items()))
        except InvalidAnswerError as e:
            return error(request, 422, str(e), token)
        item_id = fields.get("item_id", "")
        if not ITEM_ID_RE.fullmatch(item_id) or item_id not in study.item_ids:
            return error(request, 404, "This image is not part of the study.", token)
        try:
            await run_in_threadpool(
                lambda: db.record_answer(
                    observer.observer_id,
                    item_id,
                    answer=fields.get("answer", ""),
                    confidence=fields.get("confidence", ""),
                    diagnosis=fields.get("diagnosis") or None,
                )
            )
        except InvalidAnswerError as e:
            return error(request, 422, str(e), token)
        except AnswerConflictError as e:
            return error(request, 409, str(e), token)
        return RedirectResponse(f"/s/{token}/rate", status_code=303)

    def image(token: str, item_id: str, side: Side | None) -> Response:
        observer_for(token)
        if not ITEM_ID_RE.fullmatch(item_id) or item_id not in study.item_ids:
            raise HTTPException(404, "This image is not part of the study.")
        try:
            content = study.read_image(item_id, side)
        except DataError:
            raise HTTPException(404, "This image is not part of the study.") from None
        # Bytes, not a FileResponse: no ETag or Last-Modified built from the file's time and size.
        return Response(content, media_type="image/png")

    if study.design == "single":

        @app.get("/s/{token}/image/{item_id}")
        def image_single(token: str, item_id: str) -> Response:
            return image(token, item_id, None)
    else:

        @app.get("/s/{token}/image/{item_id}/{side}")
        def image_pair(token: str, item_id: str, side: str) -> Response:
            if side not in SIDES:
                raise HTTPException(404, "This image is not part of the study.")
            return image(token, item_id, "left" if side == "left" else "right")

    @app.get("/s/{token}/done", response_class=HTMLResponse)
    def done(request: Request, token: str) -> Response:
        observer = observer_for(token)
        progress = db.progress(observer.observer_id)
        if not progress.done:
            return RedirectResponse(f"/s/{token}/rate", status_code=303)
        return page(request, "done.html", token=token, progress=progress)

    return app


def serve(app: "FastAPI", *, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn until Ctrl-C, which then propagates as KeyboardInterrupt (exit code 130).

    ``uvicorn.run`` would swallow it and return as if the server had ended by itself. No access log: every
    URL carries an observer's token, and logs get copied around.
    """
    import uvicorn

    from dermadv.models.serve import bind

    sock = bind(host, port)  # a bad or busy port in one line, where uvicorn would log a traceback and exit 3
    try:
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False))
        server.run(sockets=[sock])  # shuts down gracefully on SIGINT/SIGTERM, then raises the signal again
    finally:
        sock.close()


class HeadAsGet:
    """ASGI middleware: answer ``HEAD`` as ``GET`` with the same headers and no body (RFC 9110, 9.3.2)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
