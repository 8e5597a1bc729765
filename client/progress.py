"""tqdm bars fed by a job's SSE events: a training's step / total, loss and ETA (the service's own estimate,
which counts preview time), a generation's sampling steps and finished images. Bars go to stderr, so stdout
keeps only results (paths, ids) for scripts."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from client.sse import Event

FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class _Bar:
    def __init__(self, job: dict[str, Any], what: str, unit: str, file: TextIO | None):
        self.what, self.file = what, file or sys.stderr
        self.bar = tqdm(
            total=max(job["progress"]["total_steps"] or 1, 1),
            desc=f"{what} {job['status']}",
            unit=unit,
            bar_format=FORMAT,
            file=self.file,
            dynamic_ncols=True,
            leave=True,
        )

    def _status(self, status: str) -> None:
        self.bar.set_description_str(f"{self.what} {status}", refresh=False)

    def _step(self, step: int | None, total: int | None) -> None:
        if total and total != self.bar.total:
            self.bar.total = total
        if step is not None and step != self.bar.n:
            self.bar.n = step  # absolute: a resumed job may restart below a step already shown
        self.bar.refresh()

    def note(self, text: str) -> None:
        self.bar.write(text, file=self.file)

    def close(self) -> None:
        self.bar.close()


class TrainingBar(_Bar):
    def __init__(self, job: dict[str, Any], file: TextIO | None = None):
        super().__init__(job, "training", "step", file)
        self.previews: set[tuple[int, int]] = set()

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.name == "snapshot":
            self._status(d["status"])
            self._show(d["progress"])
            for p in d["previews"]:
                self._preview(p["step"], p["index"], p["url"])
        elif event.name == "progress":
            self._status("running")
            self._show(d)
        elif event.name == "preview":
            self._preview(d["step"], d["index"], d["url"])
        elif event.name == "status":
            self._status(d["status"])
            self.bar.refresh()

    def _show(self, p: dict[str, Any]) -> None:
        parts = []
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.4f}")
        if p.get("eta_seconds") is not None:
            parts.append(f"ETA {tqdm.format_interval(p['eta_seconds'])}")
        if p.get("seconds_per_step"):
            parts.append(f"{p['seconds_per_step']:.2f} s/step")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self._step(p.get("step"), p.get("total_steps"))

    def _preview(self, step: int, index: int, url: str) -> None:
        if (step, index) not in self.previews:
            self.previews.add((step, index))
            self.note(f"preview at step {step} (prompt {index}): {url}")


class GenerationBar(_Bar):
    def __init__(self, job: dict[str, Any], file: TextIO | None = None):
        super().__init__(job, "generation", "step", file)
        self.images: set[int] = set()
        self.num_images = job["params"].get("num_images", 1)

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.name == "snapshot":
            self._status(d["status"])
            self.images.update(i["index"] for i in d["images"])
            self._count()
            self._step(d["progress"]["step"], d["progress"]["total_steps"])
        elif event.name == "progress":
            self._status("running")
            self._step(d["step"], d["total_steps"])
        elif event.name == "image":
            self.images.add(d["index"])
            self._count()
            self.bar.refresh()
        elif event.name == "status":
            self._status(d["status"])
            self.bar.refresh()

    def _count(self) -> None:
        self.bar.set_postfix_str(f"images {len(self.images)}/{self.num_images}", refresh=False)


def bar_for(kind: str, job: dict[str, Any], file: TextIO | None = None) -> _Bar:
    return (TrainingBar if kind == "training" else GenerationBar)(job, file)
