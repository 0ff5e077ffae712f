"""Check: `cxrlab serve MODEL` in headless Chromium, on any model and any films; prints what the
page shows for each film and saves a screenshot.

    uv run python benchmarks/serve_browser.py RUN FILM... [--out runs/benchmarks/serve-browser]

Starts the real server (``cxrlab serve MODEL --port P``, a separate process, localhost), opens the
page in Debian's chromium driven by Playwright (the system binary: ``apt-get install chromium``),
chooses the films through the page's file input and waits for every card. Per film it prints the
probabilities as the bars show them, the decision, the operating-point decision, whether the
Grad-CAM overlay is shown and whether the OOD warning is; then the model's known limitations as
the page lists them. Exits 1 when a readable film has no bars or no overlay (PyTorch models), or
when the page logs a script error. The automated version on a tiny model is
tests/test_serve_browser.py; this script is for real models and real films.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import Server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="run folder, model.pt or .onnx")
    parser.add_argument("films", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/serve-browser"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--serve-option", action="append", default=[], help="passed to serve")
    args = parser.parse_args()
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        print("SKIP: no chromium binary (apt-get install -y chromium)")
        return 0
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    failed = False
    server = Server(args.model, args.device, args.serve_option)
    print("$ cxrlab " + shlex.join(server.args), flush=True)
    with server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(server.url + "/")
        expect(page.locator("#model-summary")).not_to_be_empty()
        print("model:", " ".join(page.locator("#model-summary").text_content().split()))
        page.set_input_files("#files", [str(f) for f in args.films])
        expect(page.locator("#table tbody tr")).to_have_count(len(args.films), timeout=300_000)
        pytorch = "ONNX" not in page.locator("#model-summary").text_content()
        for card in page.locator(".card").all():
            name = card.locator(".filename").text_content()
            if "error" in (card.get_attribute("class") or ""):
                print(f"- {name}: {card.locator('.status').text_content()}")
                continue
            bars = card.locator(".bar-row").all_text_contents()
            overlay = card.locator(".overlay").is_visible()
            ood = card.locator(".ood-warning")
            warned = ood.count() > 0 and ood.is_visible()
            print(f"- {name}: " + "; ".join(" ".join(b.split()) for b in bars))
            print(f"    {card.locator('.decision').text_content()}")
            if card.locator(".operating").count():
                print(f"    {card.locator('.operating').text_content()}")
            print(f"    Grad-CAM overlay shown: {overlay}; OOD warning shown: {warned}")
            failed |= not bars or (pytorch and not overlay)
        print("known limitations on the page:")
        for item in page.locator("#limitations li").all_text_contents():
            print(f"  - {' '.join(item.split())}")
        args.out.mkdir(parents=True, exist_ok=True)
        shot = args.out / f"{args.model.resolve().name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        browser.close()
    problems = [p for p in problems if "status of 415" not in p and "status of 422" not in p]
    for problem in problems:
        print(f"page error: {problem}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
