"""Browser fixtures: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, against the
real service of the end-to-end tests (uvicorn API + Celery worker processes, PostgreSQL, Redis).

A missing browser makes these tests fail, not skip: `.ci/run` installs it (`apt-get install chromium
chromium-driver`). Screenshots go to the test's temporary folder, or to $O1LORA_WEB_SCREENSHOTS when set
(`O1LORA_WEB_SCREENSHOTS=docs/images` refreshes the README's pictures).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

# The e2e `service` fixture, shared rather than copied (tests/ folders are not packages, so load it by path).
_spec = importlib.util.spec_from_file_location(
    "e2e_service_fixtures", Path(__file__).resolve().parents[1] / "e2e" / "conftest.py"
)
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)
service = _e2e.service
service_env = _e2e.service_env  # what `service` asks for (extra environment of the service processes)
first_worker_env = _e2e.first_worker_env  # what `service` asks for (extra environment of the first worker)

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1280, 900)


@pytest.fixture(scope="session")
def tiny_model_e2e():
    """The model the service runs: here the bundled o1-shapes model rather than a random one, so that the page's
    previews and results show shapes (and the screenshots show what a user would see)."""
    return Path(__file__).resolve().parents[2] / "models" / "o1-shapes"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    where = os.environ.get("O1LORA_WEB_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium chromium-driver (.ci/run does it)")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=DriverService(executable_path=driver_path))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
