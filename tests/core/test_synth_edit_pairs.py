"""core.synth.edit_pairs: pairs in the edit-dataset convention, and a score that tells an edit from a copy."""

from __future__ import annotations

import json

from core.data import validate_dataset
from core.synth import render
from core.synth.edit_pairs import edit_scenes, edit_score, recoloured, write_edit_pairs


def test_pairs_validate_as_an_edit_dataset_and_the_score_separates_edit_from_copy(tmp_path):
    scenes = edit_scenes(5, 4, "blue")
    assert all(s.shapes[0].colour != "blue" and len(s.shapes) == 1 for s in scenes)
    folder = write_edit_pairs(tmp_path, scenes, "blue", 64)
    report = validate_dataset(folder, resolution=64, min_side=32)
    assert (report.usable, report.with_references) == (4, 4)
    line = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
    assert line == {"file": "out-0.png", "text": "make the shape blue", "references": ["in-0.png"]}
    scene = scenes[0]
    edited = edit_score(render(recoloured(scene, "blue"), 128), scene, "blue")
    copied = edit_score(render(scene, 128), scene, "blue")
    assert edited["colour_ok"] and edited["kept"] and edited["score"] == 1.0
    assert not copied["colour_ok"] and copied["kept"] and copied["score"] == 0.5
