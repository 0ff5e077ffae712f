"""The web app of ``cxrlab serve``: one page and the JSON API it uses.

Routes: ``GET /`` the page; ``GET /static/*`` its script and style (package files: nothing is
fetched from elsewhere, so it works offline); ``GET /api/model``; ``POST /api/predict``;
``GET /openapi.json`` the API's description. FastAPI's interactive docs (``/docs``, ``/redoc``)
are turned off: their pages load Swagger UI and ReDoc from a CDN.

Status codes of ``POST /api/predict``: 200 with one result per film; 413 a request body over
``--max-upload-mb`` (or over :data:`~cxrlab.serve.upload.MAX_FILES` films); 415 a body that is
not ``multipart/form-data``, or a film that is not an image format cxrlab reads; 422 a film that
cannot be decoded (empty, truncated, corrupt, a DICOM without pixel data, more pixels than the
decompression-bomb limit, a too-long file name) or a request without a ``file`` part; 400 a
``Host`` the server does not answer on, or a client gone mid-upload; 403 a cross-site POST.
Every error is ``{"detail": "<file name>: <reason>"}`` on one line, and the server goes on
serving.
Nothing is written to disk: uploads are parsed and decoded in memory.

Cross-site requests are refused (:func:`same_site_only`): a request whose ``Host`` is not an
address the server answers on (400; against DNS rebinding) and a POST whose ``Origin`` is not
the page's own (403; another site's page posting films to localhost).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cxrlab import __version__
from cxrlab.errors import ImageReadError
from cxrlab.serve.schemas import ErrorDetail, ModelInfo, PredictResponse
from cxrlab.serve.service import Film, ServedModel
from cxrlab.serve.upload import FIELD, UploadError, read_uploads

STATIC = resources.files("cxrlab.serve") / "static"
NOT_AN_IMAGE = frozenset({"not_image"})  # ImageReadError kinds answered 415; the others 422
SECURITY_HEADERS = {
    # the page's own script and style only; images from data: URLs and the dropped files
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MULTIPART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {
                    FIELD: {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": (
                            "One or more films: JPEG, PNG (8 or 16 bit), TIFF (8 or 16 bit), "
                            "BMP, GIF, WebP, DICOM"
                        ),
                    }
                },
            }
        }
    },
}
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")  # the names of this machine, always answered
WILDCARDS = frozenset({"0.0.0.0", "::"})  # --host values that listen on every network
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # requests that change nothing
ANY_HOST = "*"  # --allowed-host '*': the Host check is off (the Origin check stays)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "A Host this server does not answer on."},
    403: {"model": ErrorDetail, "description": "A POST from another site's page (Origin)."},
    413: {
        "model": ErrorDetail,
        "description": "Request body over the server's limit (cxrlab serve --max-upload-mb).",
    },
    415: {"model": ErrorDetail, "description": "Not multipart, or a file that is no image."},
    422: {"model": ErrorDetail, "description": "A film that cannot be decoded."},
}


def served_hosts(host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> frozenset[str]:
    """The host names a server listening on ``host`` answers to: this machine's local names,
    ``host`` itself, the ``allowed`` ones (``--allowed-host``: a reverse proxy's public name),
    and, listening on every network (``0.0.0.0``), this machine's name and addresses."""
    names = {*LOCAL_NAMES, host, *allowed}
    if host in WILDCARDS:
        names.add(socket.gethostname())
        try:
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    return frozenset(name.lower().strip("[]") for name in names)


def _hostname(netloc: str) -> str:
    """``name`` of ``name:port`` or ``[::1]:port``, lower case ('' when unparseable)."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def same_site_only(hosts: frozenset[str], allowed: Iterable[str] = ()):  # noqa: ANN201
    """The middleware refusing cross-site requests (one line of JSON each): a ``Host`` not in
    ``hosts`` (400), and a request that changes something (a POST) whose ``Origin`` is neither
    the ``Host`` it was sent to nor one of the ``allowed`` names (403). A request without an
    ``Origin`` (``curl``, a script) is not cross-site."""
    origins = frozenset(name.lower() for name in allowed)

    async def middleware(request: Request, call_next):  # noqa: ANN001, ANN202
        host = request.headers.get("host", "")
        if ANY_HOST not in hosts and _hostname(host) not in hosts:
            return JSONResponse(
                {
                    "detail": f"Host {host!r}: not an address this server answers on (a reverse "
                    "proxy's name is allowed with cxrlab serve --allowed-host NAME)"
                },
                400,
            )
        origin = request.headers.get("origin")
        if origin is not None and request.method not in SAFE_METHODS:
            netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
            if netloc != host.lower() and _hostname(netloc) not in origins:
                return JSONResponse(
                    {
                        "detail": f"Origin {origin!r}: cross-site requests are refused "
                        "(post from the server's own page, or without an Origin header)"
                    },
                    403,
                )
        return await call_next(request)

    return middleware


def create_app(
    model: Path | ServedModel,
    *,
    max_upload_mb: float = 20.0,
    device: str = "auto",
    host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The app serving ``model`` (a ``model.pt``, its ``.onnx``, a run folder, or a loaded
    :class:`ServedModel`), answering requests for ``host`` (the address it listens on) and for
    ``allowed_hosts`` (:func:`served_hosts`), and refusing cross-site ones."""
    allowed_hosts = tuple(allowed_hosts)
    served = model if isinstance(model, ServedModel) else ServedModel(Path(model), device=device)
    max_bytes = int(max_upload_mb * 1e6)
    app = FastAPI(
        title="cxrlab serve",
        version=__version__,
        description="Chest X-ray classification: calibrated probabilities, Grad-CAM and an "
        "out-of-distribution check for uploaded films.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.served = served

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A bad query parameter, as one line naming it (FastAPI's default is a list)."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, 422)

    app.middleware("http")(same_site_only(served_hosts(host, allowed_hosts), allowed_hosts))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/model", response_model=ModelInfo)
    def model_info() -> ModelInfo:
        """The served model, its calibration, operating point, checks and known limitations."""
        return served.info(max_upload_mb)

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra={"requestBody": MULTIPART_BODY},
    )
    async def predict(
        request: Request,
        gradcam: bool = Query(False, description="Add a Grad-CAM overlay of each decision."),
    ) -> PredictResponse | JSONResponse:
        """Probabilities, decisions, the OOD check and (optionally) Grad-CAM for each ``file``
        part; the first film that cannot be read fails the request, naming it."""
        try:
            uploads = await read_uploads(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                max_bytes,
            )
        except UploadError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        except ClientDisconnect:  # nobody is left to answer: no traceback in the log either
            return JSONResponse({"detail": "upload: the client disconnected"}, 400)
        films = [Film(u.filename, u.data) for u in uploads]
        try:
            results = await run_in_threadpool(served.predict, films, with_gradcam=gradcam)
        except ImageReadError as exc:
            status = 415 if exc.kind in NOT_AN_IMAGE else 422
            raise HTTPException(status, str(exc)) from None
        return PredictResponse(results=results)

    return app
