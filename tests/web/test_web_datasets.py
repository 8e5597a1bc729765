"""The datasets page in a real browser: files dropped on the drop zone are uploaded with their names, and a
refused upload shows the API's message and the validator's report naming the file that would not train."""

from __future__ import annotations

from web_helpers import css, sign_in, wait_for

# Builds Files in the page (PNGs drawn on a canvas: a square, a 16 px one too small to train; a caption) and drops
# them on the drop zone the way a file manager's drag does: a `drop` event carrying a DataTransfer.
DROP = """
const [names, done] = [arguments[0], arguments[arguments.length - 1]];
const draw = (side) => new Promise((ok) => {
  const canvas = Object.assign(document.createElement("canvas"), {width: side, height: side});
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, side, side); g.fillStyle = "#c33"; g.fillRect(side / 4, side / 4, side / 2, side / 2);
  canvas.toBlob(ok, "image/png");
});
Promise.all([draw(96), draw(16)]).then(([png, tiny]) => {
  const files = {"square.png": png, "square.txt": new Blob(["a red square"]), "tiny.png": tiny};
  const dt = new DataTransfer();
  for (const n of names) dt.items.add(new File([files[n]], n));
  document.querySelector(".dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
  done();
});
"""


def drop(driver, *names: str) -> None:
    driver.execute_async_script(DROP, list(names))
    wait_for(driver, lambda d: css(d, "#picked").text.startswith(f"{len(names)} file(s)"))


def test_dropped_files_upload_and_a_refusal_shows_the_report(service, browser):
    d = browser
    sign_in(d, service)
    before = service.http.get("/v1/datasets").json()["count"]

    drop(d, "square.png", "square.txt", "tiny.png")
    css(d, "#dataset-form button[type=submit]").click()
    error = wait_for(d, lambda d: css(d, "#dataset-form .error"))
    assert "tiny.png" in error.text
    report = css(d, "#dataset-form .report").text  # the validator's report, shown
    assert "Too small (1)" in report and "tiny.png: 16x16" in report
    assert service.http.get("/v1/datasets").json()["count"] == before  # nothing was stored

    drop(d, "square.png", "square.txt")
    css(d, "#dataset-form button[type=submit]").click()
    ok = wait_for(d, lambda d: css(d, "#dataset-ok"))
    assert "1 image(s), 1 captioned" in ok.text
    newest = service.http.get("/v1/datasets").json()["data"][0]
    assert newest["num_images"] == 1 and newest["num_captions"] == 1 and newest["name"].startswith("square.png")
