"""The observer web app: server-rendered pages (FastAPI + Jinja2), one image at a time, answers final.

Every URL starts with the observer's token; without a valid one nothing is served. Images are looked up by
opaque item id among the study's items, never by a path from the request, and the answer key is never read.
Routes only call :mod:`dermadv.observer.storage`; statistics live in :mod:`dermadv.observer.analysis`.
"""

# No ``from __future__ import annotations``: FastAPI must resolve the route annotations, and its types are
# imported inside create_app (a heavy optional dependency), out of reach of deferred evaluation.
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermadv.data.classes import CLASS_NAMES, CLASSES
from dermadv.errors import RunError
from dermadv.observer.storage import AnswerConflictError, InvalidAnswerError, Observer, StudyDB
from dermadv.observer.study import ITEM_ID_RE, SIDES, TOKEN_RE, Side, hash_token, load_study

if TYPE_CHECKING:
    from fastapi import FastAPI


TEMPLATES_DIR = Path(__file__).parent / "templates"


def create_app(study_dir: str | os.PathLike[str]) -> "FastAPI":
    """Build the app for one study folder (the database must exist: the folder comes from ``observer create``)."""
    from fastapi import FastAPI, Form, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
    from fastapi.templating import Jinja2Templates
    from starlette.exceptions import HTTPException

    study = load_study(study_dir)
    if not study.db_path.exists():
        raise RunError(f"answers database {study.db_path} not found; recreate the study with `observer create`")
    db = StudyDB(study.db_path)
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app = FastAPI(title="dermadv observer study", docs_url=None, redoc_url=None, openapi_url=None)

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
        response.headers["Referrer-Policy"] = "no-referrer"
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
    def answer(
        request: Request,
        token: str,
        item_id: str = Form(""),
        answer: str = Form(""),
        confidence: str = Form(""),
        diagnosis: str = Form(""),
    ) -> Response:
        observer = observer_for(token)
        if not ITEM_ID_RE.fullmatch(item_id) or item_id not in study.item_ids:
            return error(request, 404, "This image is not part of the study.", token)
        try:
            db.record_answer(
                observer.observer_id, item_id, answer=answer, confidence=confidence, diagnosis=diagnosis or None
            )
        except InvalidAnswerError as e:
            return error(request, 422, str(e), token)
        except AnswerConflictError as e:
            return error(request, 409, str(e), token)
        return RedirectResponse(f"/s/{token}/rate", status_code=303)

    def image(token: str, item_id: str, side: Side | None) -> FileResponse:
        observer_for(token)
        if not ITEM_ID_RE.fullmatch(item_id) or item_id not in study.item_ids:
            raise HTTPException(404, "This image is not part of the study.")
        return FileResponse(study.image_path(item_id, side), media_type="image/png")

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
