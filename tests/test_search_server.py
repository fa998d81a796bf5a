"""The search service: every endpoint, every limit, and answers identical to the library's."""
from __future__ import annotations

import asyncio
import io
import time
import zipfile

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from pydicom.uid import generate_uid

from _format_writers import write_dicom
from m3bind.errors import CheckpointError, ConfigError
from m3bind.search import server as server_module
from m3bind.search.building import build_index
from m3bind.search.index import SearchIndex
from m3bind.search.limits import ServeSettings, WorkLimiter, read_token
from m3bind.search.model_identity import SearchModel
from m3bind.search.query import search_similar, search_study, search_text
from m3bind.search.server import STATIC_DIR, create_app

from test_search_support import MODALITIES, world  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def index_dir(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server") / "index"
    build_index(SearchModel.load(world.model), [world.manifest], folder, workers=0)
    return folder


@pytest.fixture(scope="module")
def library(world, index_dir):
    index = SearchIndex.open(index_dir)
    yield index, SearchModel.load(world.model)
    index.close()


@pytest.fixture(scope="module")
def client(world, index_dir, tmp_path_factory):
    uploads = tmp_path_factory.mktemp("uploads")
    settings = ServeSettings(max_k=20, max_upload_bytes=200_000, upload_dir=uploads)
    with TestClient(create_app(index_dir, world.model, settings)) as client:
        client.uploads = uploads
        yield client


def _without_thumbnails(hits: list[dict]) -> list[dict]:
    return [{key: value for key, value in hit.items() if key != "thumbnail"} for hit in hits]


def _ids_by(library, modality: str) -> list[int]:
    return library[0].store.filter_ids(modalities=[modality]).tolist()


def test_health_page_docs_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["studies"] == 15 and health["modalities"] == {m: 3 for m in sorted(MODALITIES)}
    assert health["vector_index"] == "flat" and health["token_required"] is False and health["max_k"] == 20
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search/text", "/api/search/study", "/api/search/similar", "/api/studies/{study_id}",
            "/api/studies/{study_id}/thumbnail.png", "/api/health"} <= set(paths)


def test_the_page_needs_nothing_from_the_network():
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_text_search_answers_like_the_library(client, library):
    answer = client.post("/api/search/text", json={"text": "pleural effusion", "k": 7, "modalities": ["ct", "xray", "ecg"],
                                                   "labels": None})
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    expected = search_text(*library, "pleural effusion", 7, modalities=["ct", "xray", "ecg"])
    assert _without_thumbnails(hits) == [hit.to_json() for hit in expected] and len(hits) == 7
    assert hits[0]["thumbnail"] == f"/api/studies/{hits[0]['id']}/thumbnail.png"
    each = client.post("/api/search/text", json={"text": "effusion", "k": 2, "per_modality": True}).json()["hits"]
    assert _without_thumbnails(each) == [h.to_json() for h in search_text(*library, "effusion", 2, per_modality=True)]
    assert len(each) == 10
    patient = client.post("/api/search/text", json={"text": "x", "patient": "P2", "labels": ["emphysema"]}).json()
    assert [(h["patient_id"], h["modality"]) for h in patient["hits"]] == [("P2", "ct")]


@pytest.mark.parametrize("name", ["chest.dcm", "IM0001", "1.2.840.113619.2.55.3.6041"])  # PACS names DICOMs freely
def test_upload_of_one_file_answers_like_the_library(client, library, world, name):
    path = world.root / "studies" / "xray" / "P3_xray.dcm"
    answer = client.post("/api/search/study", files={"file": (name, path.read_bytes())},
                         data={"modality": "xray", "k": "2", "modalities": ["xray", "retina"], "per_modality": "true"})
    assert answer.status_code == 200, answer.text
    expected = search_study(*library, path, "xray", 2, modalities=["xray", "retina"], per_modality=True)
    assert len(expected) == 4
    assert _without_thumbnails(answer.json()["hits"]) == [hit.to_json() for hit in expected]
    assert answer.json()["hits"][0]["path"] == str(path.resolve())      # it finds itself
    assert list(client.uploads.iterdir()) == []                          # the upload is gone


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


def test_upload_of_a_zipped_wfdb_record_and_dicom_slice_folder(client, library, world, tmp_path):
    record = world.root / "studies" / "ecg" / "P2_ecg"
    ecg = _zip({f"P2_ecg/{record.name}.hea": record.with_suffix(".hea").read_bytes(),
                f"P2_ecg/{record.name}.dat": record.with_suffix(".dat").read_bytes()})
    answer = client.post("/api/search/study", files={"file": ("ecg.zip", ecg)}, data={"modality": "ecg", "k": "3"})
    assert answer.status_code == 200, answer.text
    expected = search_study(*library, record.with_suffix(".hea"), "ecg", 3)
    assert _without_thumbnails(answer.json()["hits"]) == [hit.to_json() for hit in expected]
    assert answer.json()["hits"][0]["path"] == str(record.with_suffix(".hea").resolve())

    series, uid = tmp_path / "series", generate_uid()
    series.mkdir()
    rng = np.random.default_rng(0)
    for z in range(6):
        write_dicom(series / f"IM{z:04d}.dcm", rng.integers(0, 2000, (24, 24)), slope=1.0, intercept=-1024.0,
                    pixel_spacing=(5.0, 5.0), position=(0.0, 0.0, 5.0 * z), instance_number=z + 1, series_uid=uid)
    folder = _zip({f"series/{p.name}": p.read_bytes() for p in sorted(series.iterdir())})
    answer = client.post("/api/search/study", files={"file": ("ct.zip", folder)}, data={"modality": "ct", "k": "5"})
    assert answer.status_code == 200, answer.text
    expected = search_study(*library, series, "ct", 5)
    assert _without_thumbnails(answer.json()["hits"]) == [hit.to_json() for hit in expected]
    assert list(client.uploads.iterdir()) == []


def test_similar_and_metadata_and_ids_outside_the_index(client, library):
    some_id = _ids_by(library, "retina")[0]
    similar = client.post("/api/search/similar", json={"id": some_id, "k": 5, "per_modality": True})
    assert similar.status_code == 200
    expected = search_similar(library[0], some_id, 5, per_modality=True)
    assert len(expected) == 14                      # all 3 of each modality but the study itself
    assert _without_thumbnails(similar.json()["hits"]) == [hit.to_json() for hit in expected]
    study = client.get(f"/api/studies/{some_id}").json()
    assert {k: v for k, v in study.items() if k != "thumbnail"} == library[0].study(some_id).to_json()
    for response in (client.get("/api/studies/9999"), client.get("/api/studies/9999/thumbnail.png"),
                     client.post("/api/search/similar", json={"id": 9999})):
        assert response.status_code == 404 and "no study with id 9999" in response.json()["detail"]
    # Only the package's own files are served; nothing by a path from the request.
    for path in ("/static/../index.py", "/static/%2e%2e/server.py", "/api/studies/..%2Fmetadata.sqlite"):
        assert client.get(path).status_code in (404, 422), path


@pytest.mark.parametrize("modality, size", [("xray", (256, 256)), ("ct", (3 * 160 + 8, 160)),
                                            ("ecg", (34 + 600, 12 * 28)), ("retina", (256, 219)),
                                            ("pathology", (256, 219))])
def test_a_thumbnail_per_modality(client, library, modality, size):
    response = client.get(f"/api/studies/{_ids_by(library, modality)[0]}/thumbnail.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == size
    assert np.asarray(image).std() > 5          # a picture, not a blank


@pytest.mark.parametrize("k", [0, 21, -3])
def test_k_outside_its_range_is_refused(client, world, k):
    text = client.post("/api/search/text", json={"text": "x", "k": k})
    assert text.status_code == 422 and "k must be between 1 and 20" in text.json()["detail"]
    path = world.root / "studies" / "retina" / "P1_retina.png"
    upload = client.post("/api/search/study", files={"file": ("a.png", path.read_bytes())},
                         data={"modality": "retina", "k": str(k)})
    assert upload.status_code == 422
    assert client.post("/api/search/text", json={"text": "x", "k": "many"}).status_code == 422


def test_oversize_unsupported_and_unreadable_uploads(client):
    big = client.post("/api/search/study", files={"file": ("big.png", b"\0" * 300_000)}, data={"modality": "retina"})
    assert big.status_code == 413 and "200000 bytes" in big.json()["detail"]
    # Without a Content-Length (chunked), the limit applies while the body streams in.
    streamed = client.post("/api/search/text", content=iter([b"{" + b" " * 150_000, b" " * 150_000 + b"}"]),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    unsupported = client.post("/api/search/study", files={"file": ("notes.docx", b"PK..")}, data={"modality": "xray"})
    assert unsupported.status_code == 415 and "unsupported file type" in unsupported.json()["detail"]
    nameless = client.post("/api/search/study", files={"file": ("IM0001", b"\0" * 200)}, data={"modality": "xray"})
    assert nameless.status_code == 415 and nameless.json()["detail"].startswith("IM0001: unsupported file type")
    corrupt = client.post("/api/search/study", files={"file": ("scan.dcm", b"not a dicom")}, data={"modality": "xray"})
    assert corrupt.status_code == 422 and corrupt.json()["detail"].startswith("scan.dcm: ")
    bomb = client.post("/api/search/study", files={"file": ("a.zip", b"not a zip")}, data={"modality": "ct"})
    assert bomb.status_code == 422 and "unreadable zip" in bomb.json()["detail"]
    wrong_modality = client.post("/api/search/study", files={"file": ("a.png", b"x")}, data={"modality": "mri"})
    assert wrong_modality.status_code == 422
    assert list(client.uploads.iterdir()) == []


def test_a_zip_that_unpacks_past_the_limit_is_refused(world, index_dir, tmp_path):
    settings = ServeSettings(max_unpacked_bytes=50_000, upload_dir=tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("IM0001.dcm", b"\0" * 1_000_000)             # compresses to ~1 kB
    with TestClient(create_app(index_dir, world.model, settings)) as client:
        answer = client.post("/api/search/study", files={"file": ("s.zip", buffer.getvalue())}, data={"modality": "ct"})
    assert answer.status_code == 413 and "unpacked zip is larger" in answer.json()["detail"]
    assert list(tmp_path.iterdir()) == []


def test_bearer_token_when_one_is_set(world, index_dir):
    settings = ServeSettings(token=SecretStr("s3cret-token"))
    with TestClient(create_app(index_dir, world.model, settings)) as client:
        assert client.get("/api/health").json()["token_required"] is True
        missing = client.post("/api/search/text", json={"text": "x"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/api/search/text", json={"text": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert client.get("/api/studies/1/thumbnail.png").status_code == 401
        assert client.get("/api/studies/1").status_code == 401
        good = client.post("/api/search/text", json={"text": "x"}, headers={"Authorization": "Bearer s3cret-token"})
        assert good.status_code == 200 and len(good.json()["hits"]) == 10


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("M3BIND_SERVE_TOKEN", raising=False)
    assert read_token() is None
    monkeypatch.setenv("M3BIND_SERVE_TOKEN", " from-env \n")
    assert read_token().get_secret_value() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(tmp_path / "token").get_secret_value() == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(tmp_path / "empty")


def test_a_slow_request_times_out(world, index_dir, monkeypatch):
    def slow_search(*args, **kwargs):
        time.sleep(1.0)
        return []

    monkeypatch.setattr(server_module, "search_text", slow_search)
    with TestClient(create_app(index_dir, world.model, ServeSettings(request_timeout_s=0.2))) as client:
        answer = client.post("/api/search/text", json={"text": "x"})
    assert answer.status_code == 504 and "longer than 0.2 s" in answer.json()["detail"]


def test_work_limiter_bounds_concurrency_and_keeps_a_slot_until_the_work_ends():
    async def scenario():
        limiter = WorkLimiter(max_concurrent=1, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(limiter.run(lambda: time.sleep(0.6) or "slow", loop.time() + 5))
        await asyncio.sleep(0.05)
        with pytest.raises(HTTPException) as busy:
            await limiter.run(lambda: "quick", limiter.deadline())
        assert busy.value.status_code == 503
        assert await slow == "slow"
        assert await limiter.run(lambda: "quick", limiter.deadline()) == "quick"
        # A timed-out request's work holds its slot until it really ends.
        with pytest.raises(HTTPException) as late:
            await limiter.run(lambda: time.sleep(0.5), loop.time() + 0.1)
        assert late.value.status_code == 504
        with pytest.raises(HTTPException) as still_busy:
            await limiter.run(lambda: "quick", loop.time() + 0.1)
        assert still_busy.value.status_code == 503
        await asyncio.sleep(0.5)
        assert await limiter.run(lambda: "quick", limiter.deadline()) == "quick"
        limiter.shutdown()

    asyncio.run(scenario())


def test_the_server_refuses_another_model(world, index_dir):
    with pytest.raises(CheckpointError, match="did not make the index"):
        create_app(index_dir, world.other_model)
