"""The pretraining script builds the same model inputs as the layout code, and its checkpoint loads back."""

import json

import torch

from core.layout import build_t2i, collate
from core.loading import load_model, load_tokenizer
from core.pretrain import TokenPool, batch_inputs, main
from core.tiny import build_tokenizer


def test_device_side_batch_equals_layout_collate():
    tok = build_tokenizer(["a small red circle in the top left", "on a light blue background", "star"])
    caps = ["a small red circle in the top left on a light blue background", "a star", "red red red star circle"]
    tp = TokenPool(tok, caps, "cpu")
    idx = torch.tensor([2, 0, 1, 0])
    drop = torch.tensor([False, False, False, True])
    got = batch_inputs(tp, idx, drop, 64, 96)
    want = collate(
        [
            build_t2i(tok, caps[2], 64, 96),
            build_t2i(tok, caps[0], 64, 96),
            build_t2i(tok, caps[1], 64, 96),
            build_t2i(tok, " ", 64, 96),
        ]
    )
    assert torch.equal(got["input_ids"], want.input_ids)
    assert torch.equal(got["token_types"], want.token_types)
    assert torch.equal(got["text_lengths"], want.text_lengths)
    # pad positions may differ (nothing attends to pads); every real position must match
    n_ar = want.input_ids.shape[1] - 1
    real = torch.ones_like(want.token_types, dtype=torch.bool)
    for b, length in enumerate(want.text_lengths.tolist()):
        real[b, length - 1 : n_ar] = False
    assert torch.equal(got["position_ids"][:, real], want.position_ids[:, real])


def test_smoke_run_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "m"
    main(["--out", str(out), "--minutes", "0.02", "--smoke"])
    log = json.loads((out / "pretrain_log.json").read_text())
    assert log["steps"] >= 1 and log["loss_curve"]
    model = load_model(out)
    tok = load_tokenizer(out)
    assert model.tms_token_id == tok.convert_tokens_to_ids("<|tms_token|>")
    assert len(list(out.glob("model-*.safetensors"))) == 4


def test_a_run_split_in_two_resumes_where_it_stopped(tmp_path):
    state = tmp_path / "state.pt"
    first, second = tmp_path / "a", tmp_path / "b"
    split = ["--minutes", "10", "--stop_after", "0.01", "--state", str(state), "--smoke"]
    main(["--out", str(first), *split])
    a = json.loads((first / "pretrain_log.json").read_text())
    main(["--out", str(second), *split, "--pool_start", "16"])
    b = json.loads((second / "pretrain_log.json").read_text())
    # the second process continues the first's step count, schedule clock and loss curve
    assert b["steps"] > a["steps"] >= 1
    assert b["loss_curve"][: len(a["loss_curve"])] == a["loss_curve"]
    assert b["train_seconds"] > a["train_seconds"]
    # edits were trained: the curve has an edit loss, and the vision tower moved away from its init
    assert "edit_loss" in b["loss_curve"][-1]
    fresh = load_model(first)
    later = load_model(second)
    name = next(n for n, _ in later.named_parameters() if ".visual." in n and n.endswith("weight"))
    assert not torch.equal(dict(fresh.named_parameters())[name], dict(later.named_parameters())[name])


def test_a_continued_run_starts_from_the_given_checkpoint_and_keeps_its_tokenizer(tmp_path):
    first, cont = tmp_path / "a", tmp_path / "b"
    main(["--out", str(first), "--minutes", "0.02", "--smoke"])
    main(
        [
            "--out",
            str(cont),
            "--init",
            str(first),
            "--minutes",
            "0.02",
            "--smoke",
            "--filler",
            "0.5",
            "--lr_floor",
            "0",
            "--shape_weight",
            "3",
            "--cycle",
            "0,0,1,2",
        ]
    )
    assert (cont / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    log = json.loads((cont / "pretrain_log.json").read_text())
    sitting = log["sittings"][-1]
    assert sitting["init"] == str(first) and sitting["filler"] == 0.5
    assert sitting["shape_weight"] == 3.0 and sitting["cycle"] == "0,0,1,2"
    a, b = load_model(first), load_model(cont)
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    wa, wb = dict(a.named_parameters())[name], dict(b.named_parameters())[name]
    # trained on from the first model's weights: moved, but by far less than a fresh init's distance (~1.4 x norm)
    assert not torch.equal(wa, wb)
    assert (wb - wa).norm() < 0.2 * wa.norm()
