"""The search service: a FastAPI app over one index and the model that made it.

Routes (``/openapi.json`` describes them; ``/docs`` shows that description without any CDN):

    GET  /                              the search page (static/index.html)
    GET  /api/health                    liveness, index size, limits (no token needed)
    POST /api/search/text               {"text", "k", "modalities", "labels", "patient"}
    POST /api/search/study              multipart: file, modality, k, modalities, labels, patient
    POST /api/search/similar            {"id", ...}: studies like an indexed one (itself left out)
    GET  /api/studies/{id}              metadata of an indexed study
    GET  /api/studies/{id}/thumbnail.png

Only studies of the index are ever read (by the path the index holds for an id); the server
never serves a file named by a request. Uploads are unpacked into a fresh temporary folder
that is deleted when the request's work ends, whatever its outcome.
"""
from __future__ import annotations

import functools
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from m3bind.errors import ConfigError, DataError
from m3bind.search.index import Hit, SearchIndex
from m3bind.search.limits import BodySizeLimit, ServeSettings, WorkLimiter, check_bearer
from m3bind.search.model_identity import SearchModel
from m3bind.search.query import search_similar, search_study, search_text
from m3bind.search.thumbnails import render_thumbnail
from m3bind.search.uploads import UnsupportedUpload, UploadTooLarge, save_upload, unpack_study, upload_suffix

STATIC_DIR = Path(__file__).parent / "static"
_THUMBNAIL_CACHE = 512


class _Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, description="Number of results (1 to the server's max_k).")
    modalities: list[str] | None = Field(None, description="Only studies of these modalities.")
    labels: list[str] | None = Field(None, description="Only studies with every one of these labels.")
    patient: str | None = Field(None, description="Only studies of this patient id.")
    per_modality: bool = Field(False, description="k results of each modality instead of k in all.")


class TextQuery(_Filters):
    text: str = Field(min_length=1, max_length=4000, description="A finding or report sentence.")


class SimilarQuery(_Filters):
    id: int = Field(description="An indexed study; results are the studies most like it.")


class Study(BaseModel):
    id: int
    path: str
    modality: str
    patient_id: str
    labels: list[str]
    report: str
    manifest: str
    manifest_row: int
    thumbnail: str


class ScoredStudy(Study):
    score: float


class SearchAnswer(BaseModel):
    hits: list[ScoredStudy]


class Health(BaseModel):
    status: str
    studies: int
    modalities: dict[str, int]
    model_modalities: list[str]
    model: str
    vector_index: str
    token_required: bool
    max_k: int
    max_upload_bytes: int


def create_app(index_dir: str | Path, model_dir: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The app for the index at ``index_dir``; the model at ``model_dir`` must be the one that made it."""
    index = SearchIndex.open(index_dir)
    try:
        model = SearchModel.load(model_dir, expected_fingerprint=index.description.model.fingerprint)
    except BaseException:
        index.close()
        raise
    return app_for(index, model, settings or ServeSettings())


def app_for(index: SearchIndex, model: SearchModel, settings: ServeSettings) -> FastAPI:
    """The app over an opened index and its loaded model."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.limiter = WorkLimiter(settings.max_concurrent, settings.request_timeout_s)
        yield
        app.state.limiter.shutdown()

    app = FastAPI(title="m3bind search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Cross-modal search over an index of medical studies, by text or by a study.")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    _add_error_handlers(app)
    app.include_router(_api(index, model, settings))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html")

    return app


def _api(index: SearchIndex, model: SearchModel, settings: ServeSettings) -> APIRouter:
    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with a token.")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_bearer(None if credentials is None else f"{credentials.scheme} {credentials.credentials}",
                     settings.token)

    def check_k(k: int) -> None:
        if not 1 <= k <= settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {k}")

    @functools.lru_cache(maxsize=_THUMBNAIL_CACHE)
    def thumbnail_of(study_id: int, path: str, modality: str) -> bytes:
        return render_thumbnail(path, _signal_kind(model, modality))

    def answer(hits: list[Hit]) -> SearchAnswer:
        return SearchAnswer(hits=[ScoredStudy(**hit.to_json(), thumbnail=_thumbnail_url(hit.study.id)) for hit in hits])

    # The index does not change under a running server (a later --add is seen after a restart).
    counts = index.store.modality_counts()
    router = APIRouter(prefix="/api")
    protected = APIRouter(dependencies=[Depends(authorized)])

    @router.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        return Health(status="ok", studies=len(index), modalities=counts,
                      model_modalities=list(model.encoder.modalities), model=model.fingerprint.removeprefix("sha256:")[:12],
                      vector_index=index.vectors.kind, token_required=settings.token is not None,
                      max_k=settings.max_k, max_upload_bytes=settings.max_upload_bytes)

    @protected.post("/search/text", response_model=SearchAnswer, tags=["search"])
    async def by_text(query: TextQuery, request: Request) -> SearchAnswer:
        """Studies of any modality that match a text."""
        check_k(query.k)
        limiter: WorkLimiter = request.app.state.limiter
        hits = await limiter.run(lambda: search_text(index, model, query.text, query.k, modalities=query.modalities,
                                                     labels=query.labels, patient=query.patient,
                                                     per_modality=query.per_modality), limiter.deadline())
        return answer(hits)

    @protected.post("/search/study", response_model=SearchAnswer, tags=["search"])
    async def by_study(request: Request, file: UploadFile = File(description="The study: one file, or a .zip of "
                                                                             "a DICOM slice folder or WFDB record."),
                       modality: str = Form(description="The uploaded study's modality."),
                       k: int = Form(10), modalities: list[str] | None = Form(None),
                       labels: list[str] | None = Form(None), patient: str | None = Form(None),
                       per_modality: bool = Form(False)) -> SearchAnswer:
        """Studies of any modality like an uploaded study."""
        check_k(k)
        suffix = upload_suffix(file.filename)
        limiter: WorkLimiter = request.app.state.limiter

        def work() -> list[Hit]:
            with tempfile.TemporaryDirectory(prefix="m3bind-upload-", dir=settings.upload_dir) as folder:
                try:
                    saved = save_upload(file.file, Path(folder), suffix, settings.max_upload_bytes, file.filename)
                    study = unpack_study(saved, Path(folder) / "study", settings.max_unpacked_bytes) \
                        if suffix == ".zip" else saved
                    return search_study(index, model, study, modality, k, modalities=modalities, labels=labels,
                                        patient=patient, per_modality=per_modality)
                except DataError as error:
                    # Name the file the user sent, not our temporary copy of it.
                    raise type(error)(file.filename, error.problem) from error

        return answer(await limiter.run(work, limiter.deadline()))

    @protected.post("/search/similar", response_model=SearchAnswer, tags=["search"])
    async def by_indexed_study(query: SimilarQuery, request: Request) -> SearchAnswer:
        """Studies like an indexed one, from its stored embedding (it is left out of the results)."""
        check_k(query.k)
        _study_or_404(index, query.id)
        limiter: WorkLimiter = request.app.state.limiter
        hits = await limiter.run(lambda: search_similar(index, query.id, query.k, modalities=query.modalities,
                                                        labels=query.labels, patient=query.patient,
                                                        per_modality=query.per_modality, model=model),
                                  limiter.deadline())
        return answer(hits)

    @protected.get("/studies/{study_id}", response_model=Study, tags=["studies"])
    def study(study_id: int) -> Study:
        """Metadata of an indexed study."""
        record = _study_or_404(index, study_id)
        return Study(**record.to_json(), thumbnail=_thumbnail_url(study_id))

    @protected.get("/studies/{study_id}/thumbnail.png", tags=["studies"],
                   responses={200: {"content": {"image/png": {}}}}, response_class=Response)
    async def thumbnail(study_id: int, request: Request) -> Response:
        """A PNG preview: the image, three CT slices, or a 12-lead ECG strip."""
        record = _study_or_404(index, study_id)
        limiter: WorkLimiter = request.app.state.limiter
        try:
            png = await limiter.run(lambda: thumbnail_of(study_id, record.path, record.modality), limiter.deadline())
        except DataError as error:
            raise HTTPException(404, f"study {study_id} cannot be previewed: {error}") from error
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    router.include_router(protected)
    return router


def _study_or_404(index: SearchIndex, study_id: int):
    record = index.study(study_id)
    if record is None:
        raise HTTPException(404, f"no study with id {study_id} in this index")
    return record


def _thumbnail_url(study_id: int) -> str:
    return f"/api/studies/{study_id}/thumbnail.png"


def _signal_kind(model: SearchModel, modality: str):
    """The modality's signal kind from its model's preprocessing, so a .npy study is drawn as what it is."""
    if modality not in model.encoder.modalities:
        return None
    spec = model.encoder.models[modality].preprocess
    return getattr(spec, "kind", None)


def _add_error_handlers(app: FastAPI) -> None:
    def status_of(error: Exception) -> int:
        if isinstance(error, UnsupportedUpload):
            return 415
        if isinstance(error, UploadTooLarge):
            return 413
        return 422

    @app.exception_handler(DataError)
    @app.exception_handler(ConfigError)
    async def unusable_input(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status_of(error))
