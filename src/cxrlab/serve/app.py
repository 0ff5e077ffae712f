"""The web app of ``cxrlab serve``: one page and the JSON API it uses.

Routes: ``GET /`` the page; ``GET /static/*`` its script and style (package files: nothing is
fetched from elsewhere, so it works offline); ``GET /api/model``; ``POST /api/predict``;
``GET /openapi.json`` the API's description. FastAPI's interactive docs (``/docs``, ``/redoc``)
are turned off: their pages load Swagger UI and ReDoc from a CDN.

Status codes of ``POST /api/predict``: 200 with one result per film; 413 a request body over
``--max-upload-mb`` (or over :data:`~cxrlab.serve.upload.MAX_FILES` films); 415 a body that is
not ``multipart/form-data``, or a film that is not an image format cxrlab reads; 422 a film that
cannot be decoded (empty, truncated, corrupt, a DICOM without pixel data, more pixels than the
decompression-bomb limit) or a request without a ``file`` part. Every error is
``{"detail": "<file name>: <reason>"}`` on one line, and the server goes on serving.
Nothing is written to disk: uploads are parsed and decoded in memory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

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
                        "description": "One or more films: JPEG, PNG (8 or 16 bit), DICOM, ...",
                    }
                },
            }
        }
    },
}
ERRORS = {
    413: {"model": ErrorDetail, "description": "Request body over --max-upload-mb."},
    415: {"model": ErrorDetail, "description": "Not multipart, or a file that is no image."},
    422: {"model": ErrorDetail, "description": "A film that cannot be decoded."},
}


def create_app(
    model: Path | ServedModel, *, max_upload_mb: float = 20.0, device: str = "auto"
) -> FastAPI:
    """The app serving ``model`` (a ``model.pt``, its ``.onnx``, a run folder, or a loaded
    :class:`ServedModel`)."""
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
    ) -> PredictResponse:
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
        films = [Film(u.filename, u.data) for u in uploads]
        try:
            results = await run_in_threadpool(served.predict, films, with_gradcam=gradcam)
        except ImageReadError as exc:
            status = 415 if exc.kind in NOT_AN_IMAGE else 422
            raise HTTPException(status, str(exc)) from None
        return PredictResponse(results=results)

    return app
