"""Pretraining's edit batches are the sampler's edit layout: the same ids, positions, token types, vision
rows and reference patches as collate(build_edit(...)) of the same pairs; and its edits never teach the
task the edit LoRA is measured on."""

import numpy as np
import torch
from PIL import Image

from core.layout import build_edit, collate, prepare_references
from core.pretrain import corpus
from core.pretrain_edits import EMPTY, EditPool
from core.synth.edit_pairs import instruction, pretraining_edit, pretraining_instructions
from core.synth.render import render
from core.tiny import build_tokenizer


def test_device_side_edit_batch_equals_the_sampler_layout():
    tok = build_tokenizer(corpus(200), vocab_size=1024)
    pool = EditPool.render(seed=3, start=10, n=6, size=64, workers=1)
    dev = pool.to("cpu", tok)
    idx = torch.tensor([4, 0, 5, 2])
    drop = torch.tensor([False, True, False, False])
    inputs, x0, refs = dev.batch(idx, drop)

    samples = []
    for i, d in zip(idx.tolist(), drop.tolist()):
        ref, tgt, text = pretraining_edit(3, 10 + i)
        assert np.array_equal(pool.references[i], np.asarray(render(ref, 64)))
        assert np.array_equal(pool.targets[i], np.asarray(render(tgt, 64)))
        prepared = prepare_references([Image.fromarray(pool.references[i])], 64, 64)
        samples.append(build_edit(tok, EMPTY if d else text, 64, 64, prepared))
    want = collate(samples)

    assert torch.equal(inputs["input_ids"], want.input_ids)
    assert torch.equal(inputs["token_types"], want.token_types)
    assert torch.equal(inputs["text_lengths"], want.text_lengths)
    assert torch.equal(inputs["pixel_values"], want.pixel_values)
    assert torch.equal(inputs["image_grid_thw"], want.image_grid_thw)
    assert torch.equal(refs, want.ref_patches)
    # pads may sit at other positions (nothing attends to them); every real position must match
    n_ar = want.input_ids.shape[1] - 1
    real = torch.ones_like(want.token_types, dtype=torch.bool)
    for b, length in enumerate(want.text_lengths.tolist()):
        real[b, length - 1 : n_ar] = False
    assert torch.equal(inputs["position_ids"][:, real], want.position_ids[:, real])
    # the loss reads the target's positions: right after the text, as many as the target has patches
    target = dev.target(inputs)
    assert target == slice(want.input_ids.shape[1], want.input_ids.shape[1] + want.n_image)
    assert x0.shape == (4, want.n_image, 3072)


def test_pretraining_edits_read_the_reference_and_never_recolour_the_shape():
    seen = set()
    for k in range(300):
        ref, tgt, text = pretraining_edit(1, k)
        seen.add(text.split(" ")[0])
        assert text in pretraining_instructions()
        assert [s.colour for s in ref.shapes] == [s.colour for s in tgt.shapes]
        if text == "keep the picture":
            assert ref == tgt
        else:
            assert ref != tgt
    assert seen == {"keep", "change", "move"}
    assert not any(instruction(c) in pretraining_instructions() for c in ("blue", "red", "green"))
