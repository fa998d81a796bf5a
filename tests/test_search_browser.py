"""The search page in a real headless Chromium (Playwright), against a server on a free loopback port.

Chromium comes from the Debian package (``apt-get install chromium``; .ci/run installs it);
Playwright's own browser download is not used. Outside CI the test skips when that browser
is missing; in CI (``CI`` set) it always runs.
"""
from __future__ import annotations

import base64
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from m3bind.search.building import build_index
from m3bind.search.model_identity import SearchModel
from m3bind.search.server import create_app

from test_search_support import world  # noqa: F401  (fixture)

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = bool(os.environ.get("CI"))

if not IN_CI:
    pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); it is required in CI", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    import uvicorn

    folder = tmp_path_factory.mktemp("browser") / "index"
    build_index(SearchModel.load(world.model), [world.manifest], folder, workers=0)
    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(create_app(folder, world.model), host="127.0.0.1", port=port,
                                             log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server)
        expect(page.locator("#status")).to_contain_text("15 studies")
        yield page
        browser.close()


def _loaded_thumbnails(page, modality: str) -> int:
    return page.evaluate("""(modality) => [...document.querySelectorAll(`section.group[data-modality="${modality}"] img.thumb`)]
        .filter((img) => img.complete && img.naturalWidth > 0).length""", modality)


def _show_only(page, modalities: set[str]) -> None:
    for box in page.locator("#modalities input").all():
        box.set_checked(box.get_attribute("value") in modalities)


def test_text_query_shows_thumbnails_of_the_chosen_modality(page):
    _show_only(page, {"ct"})
    page.fill("#text", "large pleural effusion")
    page.click("#text-form button")
    expect(page.locator("#message")).to_contain_text("Studies matching")
    expect(page.locator("section.group")).to_have_count(1)
    expect(page.locator('section.group[data-modality="ct"] .card')).to_have_count(3)
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every((i) => i.complete && i.naturalWidth > 0)")
    assert _loaded_thumbnails(page, "ct") == 3
    width = page.evaluate("() => document.querySelector('img.thumb').naturalWidth")
    assert width == 3 * 160 + 8          # three CT slices side by side


def test_upload_a_study_and_click_a_result(page, world):
    _show_only(page, {"xray", "ct", "retina", "ecg", "pathology"})
    page.select_option("#upload-modality", "retina")
    page.set_input_files("#file", str(world.root / "studies" / "retina" / "P2_retina.png"))
    expect(page.locator("#message")).to_contain_text("Studies like P2_retina.png (retina)")
    first_retina = page.locator('section.group[data-modality="retina"] .card').first
    expect(first_retina.locator(".score")).to_have_text("score 1.000")          # the study itself
    expect(first_retina.locator(".meta").last).to_contain_text("patient P2")
    page.wait_for_function("() => document.querySelectorAll('img.thumb').length > 0 && "
                           "[...document.querySelectorAll('img.thumb')].every((i) => i.complete && i.naturalWidth > 0)")
    clicked = first_retina.get_attribute("data-id")
    first_retina.click()
    expect(page.locator("#message")).to_contain_text(f"Studies like study {clicked} (retina")
    shown = page.evaluate("() => [...document.querySelectorAll('.card')].map((c) => c.dataset.id)")
    assert clicked not in shown and len(shown) == 14      # per modality: 3 of each, but the clicked one


def test_dropping_a_file_searches_with_it(page, world):
    data = base64.b64encode((world.root / "studies" / "xray" / "P1_xray.dcm").read_bytes()).decode()
    page.select_option("#upload-modality", "")
    transfer = page.evaluate_handle("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.dcm", { type: "application/dicom" }));
        return transfer;
    }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#message")).to_contain_text("Studies like dropped.dcm (xray)")
    expect(page.locator('section.group[data-modality="xray"] .card').first.locator(".score")).to_have_text("score 1.000")
