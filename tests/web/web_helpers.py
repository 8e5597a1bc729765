"""Helpers of the browser tests (a module name of its own: tests/ folders are not packages)."""

from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.common.by import By


def wait_for(driver, what, timeout: float = 60.0, poll: float = 0.2):
    """Call `what(driver)` until it returns something truthy; fail with the page's console log when it does not."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = what(driver)
            if result:
                return result
        except Exception as e:  # the element is being re-rendered: try again
            last_error = e
        time.sleep(poll)
    logs = "\n".join(str(entry) for entry in driver.get_log("browser"))
    raise AssertionError(
        f"timed out waiting for {getattr(what, '__name__', what)} ({last_error!r});\n"
        f"page text:\n{driver.find_element(By.TAG_NAME, 'body').text[:3000]}\nconsole:\n{logs}"
    )


def css(driver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def fill(driver, selector: str, value) -> None:
    field = css(driver, selector)
    field.clear()
    field.send_keys(str(value))


def images_loaded(driver, selector: str) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of each matching <img> that finished loading."""
    return [
        tuple(wh)
        for wh in driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0)"
            ".map(i => [i.naturalWidth, i.naturalHeight]);",
            selector,
        )
    ]


def screenshot(driver, folder: Path, name: str) -> Path:
    """The whole page (the window grows to the document's height for the shot, then shrinks back)."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.set_window_size(width, max(height, min(full + 120, 4000)))
    time.sleep(0.3)  # let the canvas redraw at the new size
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(width, height)
    return path


def sign_in(driver, service) -> None:
    """Open the page and paste the service's key (the page keeps it for the tab's session)."""
    driver.get(service.base_url + "/#datasets")
    if not all_css(driver, "#signout"):
        wait_for(driver, lambda d: css(d, "#signin"))
        fill(driver, "#api-key", service.http.headers["Authorization"].split()[1])
        css(driver, "#signin button[type=submit]").click()
    wait_for(driver, lambda d: css(d, "#dataset-form"))
