"""``cxrlab serve`` end to end in a real headless browser: Playwright driving Debian's chromium.

Playwright's own browser download cannot work offline, so the system binary is used
(``apt-get install chromium``; ``.ci/run`` installs it). The test skips, saying so, only where
no chromium binary is found.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import dataset_films, film_formats, served_run, unlike_films

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
EVIL_NAME = "<img src=x onerror=window.__xss=1>.png"


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no chromium binary found (install Debian's: apt-get install -y chromium); "
        "the browser test of cxrlab serve did not run"
    )


@pytest.fixture(scope="module")
def server_url(
    tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real app on a free local port, served by uvicorn in a thread."""
    import uvicorn

    from cxrlab.serve.app import create_app

    chromium_binary()  # skip before training when there is no browser
    run_dir = served_run(tiny_data, tmp_path_factory.mktemp("browser") / "run")
    app = create_app(run_dir, device="cpu")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        thread.join(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        listening.close()


def upload_folder(tiny_data: tuple[Path, Path], folder: Path) -> list[Path]:
    """Films to choose: three formats, an evil name, uniform noise, and a file that is no image."""
    folder.mkdir()
    formats = film_formats(dataset_films(tiny_data)[0], folder)
    paths = []
    for key in ("jpeg", "png16", "dicom"):
        name, data = formats[key]
        paths.append(folder / f"up-{name}")
        paths[-1].write_bytes(data)
    (folder / EVIL_NAME).write_bytes(formats["png8"][1])
    (folder / "noise.png").write_bytes(unlike_films(32)["noise.png"])
    (folder / "notes.png").write_bytes(b"not a film at all\n" * 10)
    return [*paths, folder / EVIL_NAME, folder / "noise.png", folder / "notes.png"]


def test_the_page_in_chromium(
    server_url: str, tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    files = upload_folder(tiny_data, tmp_path / "films")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_binary(), headless=True)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(server_url)
            expect = sync_api.expect  # (page.wait_for_function would need the CSP's eval)
            expect(page.locator("#model-summary")).to_contain_text("resnet18")
            assert page.locator("#limitations li").count() >= 1
            expect(page.locator("#sources")).to_contain_text("Trained on films from: data (")
            page.set_input_files("#files", [str(p) for p in files])
            expect(page.locator("#table tbody tr")).to_have_count(len(files), timeout=60_000)
            cards = {
                card.locator(".filename").text_content(): card
                for card in page.locator(".card").all()
            }
            assert set(cards) == {p.name for p in files}  # every name shown as text

            for path in files[:5]:  # the readable films
                card = cards[path.name]
                assert card.locator(".bar-row").count() == 3, path.name
                widths = card.locator(".bar-fill").evaluate_all(
                    "bars => bars.map(b => parseFloat(b.style.width))"
                )
                assert sum(widths) == pytest.approx(100.0, abs=0.5), path.name
                assert card.locator(".decision").text_content().startswith("Most probable: ")
                assert card.locator(".operating").text_content().startswith("Operating point")
                overlay = card.locator(".overlay")
                assert overlay.is_visible(), path.name
                assert overlay.evaluate("img => img.complete && img.naturalWidth") >= 256
                decision = card.locator(".decision").text_content().split(": ")[1].split(" (")[0]
                caption = card.locator(".cam-caption").text_content()
                assert caption.startswith(f"Grad-CAM of {decision} "), caption  # which class
                assert card.locator(".cam-bar").is_visible()  # the colour scale
                assert card.locator(".card-limits li").count() >= 1
                assert card.locator(".card-sources").text_content().startswith("Trained on")
            noise = cards["noise.png"]
            assert noise.locator(".ood-warning").is_visible()
            assert "Unlike the training films" in noise.locator(".ood-warning").text_content()
            listed = noise.locator(".warnings li").all_text_contents()
            assert not [w for w in listed if "unlike the training" in w.lower()]  # said once
            bad = cards["notes.png"]
            assert "error" in bad.get_attribute("class")
            assert bad.locator(".status").text_content().startswith("notes.png: not image")
            assert page.evaluate("window.__xss") is None  # the evil name stayed text
            assert page.locator("img[src='x']").count() == 0

            page.uncheck("#gradcam")  # the toggle hides every overlay, and shows them again
            assert not cards["noise.png"].locator(".overlay").is_visible()
            with page.expect_request("**/api/predict?gradcam=false"):  # asked for only if wanted
                page.set_input_files("#files", [str(files[0])])  # the same name a second time
            expect(page.locator("#table tbody tr")).to_have_count(len(files) + 1, timeout=60_000)
            again = f"{files[0].name} (2)"  # one name per film, unique
            second = page.locator(".card", has=page.locator(".filename", has_text=again))
            expect(second.locator(".decision")).to_contain_text("Most probable")
            assert second.locator(".overlay").get_attribute("src") is None
            page.check("#gradcam")  # (cards by name: a new card shifts the positions of the rest)
            noise = page.locator(".card", has=page.locator(".filename", has_text="noise.png"))
            assert noise.locator(".overlay").is_visible()
            names = page.locator("#table tbody tr td:first-child").all_text_contents()
            assert sorted(names) == sorted([p.name for p in files] + [again])
            failed = page.locator("#table tbody tr.failed td:last-child").all_text_contents()
            assert failed == ["not image: not a recognised image format"]  # no name repeated
            assert "operating point" in page.locator("#table thead").text_content()

            page.locator("#table th", has_text="OOD score").click()
            page.locator("#table th", has_text="OOD score").click()  # descending
            first = page.locator("#table tbody tr").first.locator("td").first.text_content()
            assert first == "noise.png"
            with page.expect_download() as download:
                page.click("#csv")
            data = Path(download.value.path()).read_bytes()
            assert data.startswith(b"\xef\xbb\xbf")  # a spreadsheet reads it as UTF-8
            rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
            assert len(rows) == len(files) + 1 and rows[0]["file"] != ""
            assert {r["file"] for r in rows} == {p.name for p in files} | {again}
            assert float(next(r for r in rows if r["file"] == "noise.png")["OOD score"]) > 0
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    problems = [p for p in problems if "status of 415" not in p and "status of 422" not in p]
    assert problems == []  # no script error, no blocked resource (the page is offline-clean)
