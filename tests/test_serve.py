"""``cxrlab serve``: the JSON API and the page, through FastAPI's test client, on a tiny run."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving import (
    bad_films,
    dataset_films,
    film_formats,
    local_client,
    served_run,
    unlike_films,
)

from cxrlab.cli import run
from cxrlab.data.cache import decode_square
from cxrlab.evaluation.ood import OodStats, load_stats_for, score_files, stats_path
from cxrlab.evaluation.predict import load_predictor, predict_files
from cxrlab.serve.app import create_app
from cxrlab.serve.service import Film, ServedModel


@pytest.fixture(scope="module")
def run_dir(tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_run(tiny_data, tmp_path_factory.mktemp("served") / "run")


@pytest.fixture(scope="module")
def served(run_dir: Path) -> ServedModel:
    return ServedModel(run_dir, device="cpu")


@pytest.fixture(scope="module")
def client(served: ServedModel) -> TestClient:
    return local_client(create_app(served))


def post(client: TestClient, *films: tuple[str, bytes], gradcam: bool = False):
    parts = [("file", (name, data, "application/octet-stream")) for name, data in films]
    return client.post(f"/api/predict?gradcam={str(gradcam).lower()}", files=parts)


def decode_data_url(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_model_info(client: TestClient) -> None:
    info = client.get("/api/model").json()
    assert info["arch"] == "resnet18" and info["classes"] == ["COVID19", "NORMAL", "PNEUMONIA"]
    assert info["image_size"] == 32 and info["resize"] == "squash"
    assert info["runtime"] == "PyTorch" and info["temperature"] > 0
    assert info["operating_point"]["label"] == "COVID19"
    assert info["operating_point"]["target_recall"] == pytest.approx(0.9)
    assert info["gradcam"] == {"available": True, "layer": "network.layer3", "reason": None}
    ood = info["ood"]
    assert ood["available"] and ood["reason"] is None and ood["threshold"] > 0
    assert ood["quantile"] == 0.99 and ood["n_train"] == 18 and ood["n_val"] == 6
    assert "Mahalanobis" in ood["method"]
    assert info["known_limitations"] and all(isinstance(s, str) for s in info["known_limitations"])
    # the training sources beside every answer: one source here, its films per class
    assert info["training_sources"].startswith("Trained on films from: data (COVID19 ")
    assert info["max_upload_mb"] == 20.0


@pytest.mark.parametrize("fmt", ["jpeg", "png8", "png16", "rgba", "dicom"])
def test_each_format_is_answered_as_predict_answers_its_file(
    client: TestClient,
    served: ServedModel,
    tiny_data: tuple[Path, Path],
    tmp_path: Path,
    fmt: str,
) -> None:
    name, data = film_formats(dataset_films(tiny_data)[0], tmp_path)[fmt]
    response = post(client, (name, data))
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["filename"] == name
    probs = result["probabilities"]
    assert list(probs) == served.predictor.classes and sum(probs.values()) == pytest.approx(1.0)
    assert result["decision"] == max(probs, key=probs.get)
    assert result["operating_decision"] in served.predictor.classes
    assert result["ood"]["threshold"] == served.ood.threshold
    assert decode_data_url(result["film_png"]).size == (256, 256)
    assert result["gradcam_png"] is None
    assert (fmt == "rgba") == any("transparency" in w for w in result["warnings"])
    on_disk = tmp_path / name
    on_disk.write_bytes(data)  # the same bytes as a file: `predict` gives the same numbers
    expected = predict_files(served.predictor, [on_disk])
    assert list(probs.values()) == pytest.approx(expected.probs[0].tolist(), abs=1e-6)
    assert result["operating_decision"] == expected.decisions[0]


def test_bad_inputs_are_4xx_naming_the_file_and_the_server_goes_on(
    client: TestClient, tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    good = film_formats(dataset_films(tiny_data)[0], tmp_path)["png8"]
    for case, (name, data, status, phrase) in bad_films(tmp_path, good[1]).items():
        response = post(client, (name, data))
        assert response.status_code == status, (case, response.text)
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        assert detail.startswith(f"{name}: ") and phrase in detail and "\n" not in detail, case
        assert post(client, good).status_code == 200, case  # still serving


def test_films_are_decoded_a_few_at_a_time(
    served: ServedModel, tiny_data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each film is decoded holding one of the server's DECODE_SLOTS (so hostile films sent at
    once cannot each take their decoding memory): with one slot, none is free while decoding."""
    from cxrlab.serve import service

    assert service.DECODE_SLOTS == 2  # the number the README states
    monkeypatch.setattr(served, "decoding", threading.BoundedSemaphore(1))
    free_while_decoding = []

    def decode(*args: object, **kwargs: object) -> object:
        free = served.decoding.acquire(blocking=False)
        if free:
            served.decoding.release()
        free_while_decoding.append(free)
        return decode_square(*args, **kwargs)

    monkeypatch.setattr(service, "decode_square", decode)
    films = [Film(p.name, p.read_bytes()) for p in dataset_films(tiny_data)[:3]]
    assert len(served.predict(films)) == 3
    assert free_while_decoding == [False, False, False]
    assert served.decoding.acquire(blocking=False)  # released afterwards


def test_a_bad_film_in_a_batch_is_named(client: TestClient, tiny_data: tuple[Path, Path]) -> None:
    films = [(p.name, p.read_bytes()) for p in dataset_films(tiny_data)[:2]]
    response = post(client, films[0], ("second<b>.png", b"GIF89a not really"), films[1])
    assert response.status_code == 422
    assert response.json()["detail"].startswith("second<b>.png: ")


def test_a_batch_answers_every_film_in_order(
    client: TestClient, tiny_data: tuple[Path, Path]
) -> None:
    films = [(p.name, p.read_bytes()) for p in dataset_films(tiny_data)]
    response = post(client, *films)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [name for name, _ in films]
    single = post(client, films[3]).json()["results"][0]
    assert single["probabilities"] == pytest.approx(results[3]["probabilities"], abs=1e-6)


def test_the_overlay_leaves_the_film_readable() -> None:
    """Blended by the map: the film alone where Grad-CAM is 0, colour only where it is high."""
    from cxrlab.serve.service import OVERLAY_MAX_ALPHA, overlay

    film = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    cam = np.zeros((32, 32))
    cam[:8] = 1.0
    mixed = overlay(film, cam).astype(int)
    assert (mixed[8:] == film[8:, :, None]).all()  # the film, unchanged, where the map is 0
    assert 0 < OVERLAY_MAX_ALPHA < 1 and np.abs(mixed[:8, :, 0] - mixed[:8, :, 2]).max() > 50


def test_gradcam_overlay_on_request(client: TestClient, tiny_data: tuple[Path, Path]) -> None:
    film = dataset_films(tiny_data)[0]
    result = post(client, (film.name, film.read_bytes()), gradcam=True).json()["results"][0]
    overlay = decode_data_url(result["gradcam_png"])
    assert overlay.mode == "RGB" and overlay.size == (256, 256)
    pixels = np.asarray(overlay, dtype=np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 20  # coloured, not the grey film


def test_films_unlike_the_training_films_are_flagged(
    client: TestClient, tiny_data: tuple[Path, Path]
) -> None:
    films = [(p.name, p.read_bytes()) for p in dataset_films(tiny_data)]
    usual = [r["ood"] for r in post(client, *films).json()["results"]]
    assert sum(o["unlike_training"] for o in usual) <= 2  # of 9 films like the training films
    for name, data in unlike_films(32).items():
        (result,) = post(client, (name, data)).json()["results"]
        assert result["ood"]["unlike_training"], name
        assert result["ood"]["score"] > max(o["score"] for o in usual), name
        assert result["warnings"][0].startswith("unlike the training films"), name


def test_fitted_statistics_agree_with_the_served_features(
    served: ServedModel, run_dir: Path, tiny_data: tuple[Path, Path]
) -> None:
    """The validation films scored through the serving path give the flag rate of the fit."""
    import csv

    with open(run_dir / "split.csv") as handle:
        val = [tiny_data[0] / r["path"] for r in csv.DictReader(handle) if r["subset"] == "val"]
    p = served.predictor
    scores = score_files(p.model, p.spec, served.ood, val)
    assert len(scores.scores) == served.ood.n_val == 6
    assert scores.flag_rate == pytest.approx(served.ood.val_flag_rate)
    assert scores.summary() == f"flagged {scores.flagged.sum()} of 6 ({scores.flag_rate:.1%})"


def test_the_ood_score_is_the_single_view_s_read_from_the_answering_pass(
    served: ServedModel, tiny_data: tuple[Path, Path]
) -> None:
    """The features come from the forward pass that gave the probabilities (no second pass), and
    score as the single view's; under test-time augmentation (several views per film) the score
    is still the single view's."""
    import dataclasses

    import torch

    from cxrlab.data.cache import load_square
    from cxrlab.evaluation.ood import head_features
    from cxrlab.models.tta import with_tta
    from cxrlab.serve.service import Film

    films = dataset_films(tiny_data)[:4]
    uploads = [Film(f.name, f.read_bytes()) for f in films]
    p = served.predictor
    images = np.stack([load_square(f, p.spec) for f in films])[:, None] / np.float32(255.0)
    expected = served.ood.score(head_features(p.model, images.astype(np.float32)))
    assert [r.ood.score for r in served.predict(uploads)] == pytest.approx(expected, rel=1e-6)

    views = with_tta(p.model, True).eval()

    @torch.no_grad()
    def tta_probs(batch: np.ndarray) -> np.ndarray:
        return torch.softmax(views(torch.from_numpy(batch)), dim=1).numpy()

    served.predictor = dataclasses.replace(p, batch_probs=tta_probs)
    try:
        scores = [r.ood.score for r in served.predict(uploads)]
    finally:
        served.predictor = p
    assert scores == pytest.approx(expected, rel=1e-6)


def test_the_page_and_its_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and len(response.text) > 500
        assert "http://" not in response.text and "https://" not in response.text  # no CDN
    assert "http://" not in page.text and "https://" not in page.text
    script = client.get("/static/app.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "textContent" in script
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/predict"]["post"]
    assert {"200", "413", "415", "422"} <= set(operation["responses"])
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert "FilmResult" in spec["components"]["schemas"]


def test_file_names_are_never_html(client: TestClient, tiny_data: tuple[Path, Path]) -> None:
    film = dataset_films(tiny_data)[0]
    name = "<img src=x onerror=alert(1)><script>alert(2)<script>.png"
    response = post(client, (name, film.read_bytes()))
    assert response.headers["content-type"] == "application/json"
    assert response.json()["results"][0]["filename"] == name  # JSON: the page sets textContent
    bad = post(client, (name, b"no image"))
    assert bad.headers["content-type"] == "application/json"
    assert bad.json()["detail"].startswith(name)
    assert "<script>" not in client.get("/").text  # the page holds no user data
    raw = (  # control characters in the name, as a hand-made client may send them
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="tab\tesc\x1b.png"'
        b"\r\n\r\nno image\r\n--B--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=B"}
    detail = client.post("/api/predict", content=raw, headers=headers).json()["detail"]
    assert detail.startswith("tab?esc?.png: ")


def test_one_name_per_film_as_the_person_named_it(
    client: TestClient, tiny_data: tuple[Path, Path]
) -> None:
    """The API's name is the one the page's card shows (the browser's File.name): slashes and
    backslashes kept, the browser's %22 for a quote turned back."""
    film = dataset_films(tiny_data)[0].read_bytes()
    for sent, named in (
        ("<script>alert(2)</script>.png", "<script>alert(2)</script>.png"),
        ("say %22hi%22.png", 'say "hi".png'),
        ('say "hi".png', 'say "hi".png'),
        ("a\\b.png", "a\\b.png"),
    ):
        assert post(client, (sent, film)).json()["results"][0]["filename"] == named, sent
        assert post(client, (sent, b"no image")).json()["detail"].startswith(f"{named}: "), sent


def test_uploads_over_the_limit_are_413_naming_the_file(served: ServedModel) -> None:
    small = local_client(create_app(served, max_upload_mb=0.05))
    assert small.get("/api/model").json()["max_upload_mb"] == 0.05
    limit = "over the upload limit of 0.05 MB (cxrlab serve --max-upload-mb)"
    for size in (60_000, 20_000_000):
        response = post(small, ("big film.png", bytes(size)))
        assert response.status_code == 413
        assert response.json()["detail"] == f"big film.png: {limit}"
    photo = next(iter(unlike_films(32).items()))
    response = post(small, photo, ("second.png", bytes(60_000)))
    assert response.json()["detail"] == f"second.png: {limit}"
    assert post(small, photo).status_code == 200  # a small film right after


def test_requests_that_are_not_uploads(client: TestClient) -> None:
    text = client.post("/api/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "multipart/form-data" in text.json()["detail"]
    other = client.post("/api/predict", data={"note": "x"}, files={"other": ("a.png", b"x")})
    assert other.status_code == 422 and "no 'file' part" in other.json()["detail"]
    query = client.post("/api/predict?gradcam=perhaps", files={"file": ("a.png", b"x")})
    assert query.status_code == 422 and query.json()["detail"].startswith("gradcam: ")


def test_nothing_is_written_to_disk(
    client: TestClient, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    noise = np.random.default_rng(1).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big = ("big.png", Image.fromarray(noise).tobytes())  # 1.2 MB: Starlette would spool it
    photo = next(iter(unlike_films(32).items()))
    assert post(client, photo, big, gradcam=True).status_code == 415
    assert post(client, photo, gradcam=True).status_code == 200
    assert not any(scratch.iterdir())
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_onnx_backend_has_neither_gradcam_nor_ood(
    run_dir: Path, tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from cxrlab.models.export import export_onnx

    onnx = export_onnx(run_dir / "model.pt", tmp_path / "model.onnx")
    shutil.copy(run_dir / "ood.npz", tmp_path / "ood.npz")
    client = local_client(create_app(onnx, device="cpu"))
    info = client.get("/api/model").json()
    assert info["runtime"] == "ONNX Runtime"
    assert not info["gradcam"]["available"] and "model.pt" in info["gradcam"]["reason"]
    assert not info["ood"]["available"] and "model.pt" in info["ood"]["reason"]
    assert info["known_limitations"] == [] and info["operating_point"]["label"] == "COVID19"
    film = dataset_films(tiny_data)[0]
    (result,) = post(client, (film.name, film.read_bytes()), gradcam=True).json()["results"]
    assert result["gradcam_png"] is None and result["ood"] is None
    torch_result = predict_files(run_dir / "model.pt", [film], device="cpu")
    assert list(result["probabilities"].values()) == pytest.approx(
        torch_result.probs[0].tolist(), abs=1e-4
    )


def test_a_bare_model_and_stale_statistics(run_dir: Path, tmp_path: Path) -> None:
    shutil.copy(run_dir / "model.pt", tmp_path / "model.pt")
    info = ServedModel(tmp_path / "model.pt", device="cpu").info(20.0)
    assert info.known_limitations == [] and "not in a finished run folder" in " ".join(info.notes)
    assert info.training_sources is None
    assert not info.ood.available and "no ood.npz beside model.pt" in info.ood.reason
    stats = OodStats.load(run_dir / "ood.npz")
    stats.digest = "0" * 40  # fitted for other weights
    stats.save(stats_path(tmp_path / "model.pt"))
    predictor = load_predictor(tmp_path / "model.pt", "cpu")
    assert load_stats_for(predictor.model, tmp_path / "model.pt")[0] is None
    info = ServedModel(tmp_path / "model.pt", device="cpu").info(20.0)
    assert not info.ood.available and "other weights" in info.ood.reason


def test_cli_ood_scores_a_folder(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, data in unlike_films(32).items():
        (tmp_path / "odd" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "odd" / name).write_bytes(data)
    (tmp_path / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert run(["ood", str(run_dir), "--score", str(tmp_path / "odd"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "flagged 2 of 2 (100.0%); 1 unreadable" in out
    assert run(["ood", str(run_dir)]) == 0
    assert "Mahalanobis distance of resnet18's 512" in capsys.readouterr().out
    shutil.copy(run_dir / "model.pt", tmp_path / "model.pt")
    assert run(["ood", str(tmp_path)]) == 2
    assert "ood.npz: not computed yet" in capsys.readouterr().err


def test_cli_serve_refuses_a_taken_port_in_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(["serve", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and len(err.splitlines()) == 1


def test_cross_site_requests_are_refused_in_one_line(
    served: ServedModel, client: TestClient, tiny_data: tuple[Path, Path]
) -> None:
    """Another site's page cannot post films (Origin), and a name that is not this server's
    (DNS rebinding: evil.example resolving to 127.0.0.1) gets nothing, not even the page."""
    film = ("film.png", dataset_films(tiny_data)[0].read_bytes())
    parts = [("file", (film[0], film[1], "image/png"))]
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        response = client.post("/api/predict", files=parts, headers={"Origin": origin})
        assert response.status_code == 403, origin
        detail = response.json()["detail"]
        assert detail.startswith(f"Origin '{origin}': cross-site") and "\n" not in detail
    own = client.post("/api/predict", files=parts, headers={"Origin": "http://127.0.0.1:8000"})
    assert own.status_code == 200 and post(client, film).status_code == 200  # own page; curl
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        for path in ("/", "/api/model"):
            response = client.get(path, headers={"Host": host})
            assert response.status_code == 400, (host, path)
            assert response.json()["detail"].startswith(f"Host '{host}': not an address")
    assert client.get("/api/model", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/model", headers={"Host": "[::1]:8000"}).status_code == 200
    proxied = TestClient(
        create_app(served, allowed_hosts=["cxr.example.org"]), base_url="https://cxr.example.org"
    )
    assert proxied.get("/api/model").status_code == 200
    origin = {"Origin": "https://cxr.example.org"}
    assert proxied.post("/api/predict", files=parts, headers=origin).status_code == 200
    assert client.get("/api/model", headers={"Host": "cxr.example.org"}).status_code == 400


def test_a_too_long_file_name_is_said_so(client: TestClient, tiny_data: tuple[Path, Path]) -> None:
    film = dataset_films(tiny_data)[0].read_bytes()
    response = post(client, ("x" * 5000 + ".png", film))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("upload: a file name is too long")


def test_a_client_gone_mid_upload_is_no_traceback(
    served: ServedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """The body stops half-way (the browser tab closed): the app answers, raises nothing and
    logs nothing (uvicorn would log a raised ClientDisconnect as a traceback)."""
    import asyncio
    import logging

    app = create_app(served)
    head = b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n\x89PNG"
    messages = [{"type": "http.request", "body": head, "more_body": True}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict",
        "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"multipart/form-data; boundary=xyz"),
            (b"content-length", b"100000"),
        ],
    }  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_the_page_lists_the_formats_the_server_reads(
    client: TestClient, tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """The page's format line is true: every format named there (and both depths where it says
    8 or 16 bit) is answered 200."""
    import re

    listed = re.search(r'id="formats">([^<]*)<', client.get("/").text).group(1)
    names = [re.sub(r" \(.*\)", "", n).strip() for n in listed.split(";")[0].split(",")]
    assert names == ["JPEG", "PNG", "TIFF", "BMP", "GIF", "WebP", "DICOM"]
    grey = np.asarray(Image.open(dataset_films(tiny_data)[0]).convert("L"))
    films = {"DICOM": film_formats(dataset_films(tiny_data)[0], tmp_path)["dicom"][1]}
    for name in names[:-1]:
        for pixels in (grey, grey.astype(np.uint16) * 257)[: 2 if name in ("PNG", "TIFF") else 1]:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=name.upper())
            films[f"{name} {pixels.dtype}"] = buffer.getvalue()
    assert len(films) == len(names) + 2
    for key, data in films.items():
        response = post(client, (f"film.{key.split()[0].lower()}", data))
        assert response.status_code == 200, (key, response.text)


def test_openapi_is_json(client: TestClient) -> None:
    assert json.loads(client.get("/openapi.json").text)["info"]["title"] == "cxrlab serve"
