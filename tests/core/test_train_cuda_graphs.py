"""When the trainer replays its compiled decoder layer as CUDA graphs (cuda_graphs), and that validation and
previews then run the layers uncompiled without losing the compiled function (nothing recompiles after)."""

from __future__ import annotations

import pytest
import torch
from test_lora_slots import CountingBackend
from test_train import flat_images, tiny  # noqa: F401 (fixtures)
from train_helpers import tiny_train_config

from core.layout import build_t2i, collate
from core.train import Trainer


def test_cuda_graphs_auto_is_one_compiled_cuda_process_on_text_to_image_data(tiny, flat_images, tmp_path):  # noqa: F811
    t = Trainer(tiny_train_config(tiny, flat_images, tmp_path / "a"))
    assert t.cuda_graphs is False  # the CPU: not compiled
    t.compiled = True  # as on CUDA, where compile "auto" is on
    assert t._want_cuda_graphs(on_cuda=True) is True
    assert t._want_cuda_graphs(on_cuda=False) is False
    t.cfg = tiny_train_config(tiny, flat_images, tmp_path / "a", offload_blocks=1, gradient_checkpointing=True)
    assert t._want_cuda_graphs(on_cuda=True) is False  # offloaded layers stream their weights
    t.cfg = tiny_train_config(tiny, flat_images, tmp_path / "a", grad_accum=2)
    assert t._want_cuda_graphs(on_cuda=True) is False  # several micro-batches a step: not measured with graphs
    t.cfg = tiny_train_config(tiny, flat_images, tmp_path / "a", cuda_graphs=False)
    assert t._want_cuda_graphs(on_cuda=True) is False
    t.cfg = tiny_train_config(tiny, flat_images, tmp_path / "a", cuda_graphs=True)
    assert t._want_cuda_graphs(on_cuda=False) is True  # asked for (inductor graphs CUDA work only)
    t.compiled = False
    assert t._want_cuda_graphs(on_cuda=True) is False  # nothing compiled, nothing to replay
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        tiny_train_config(tiny, flat_images, tmp_path / "b", cuda_graphs="yes").validate()


def test_side_calls_run_the_layers_eager_and_keep_the_compiled_function(tiny, flat_images, tmp_path):  # noqa: F811
    t = Trainer(tiny_train_config(tiny, flat_images, tmp_path / "c"))
    model, backend = t.model, CountingBackend()
    torch._dynamo.reset()
    model.compile_layers(backend)
    compiled = model._layer_fn
    batch = collate([build_t2i(t.tokenizer, "red top, green bottom", 64, 64)])
    v, ts = torch.randn(1, batch.n_image, 3072), torch.tensor([0.5])

    def forward():
        with torch.no_grad():
            return model(**batch.model_inputs(v, ts)).x_pred

    first = forward()
    assert backend.compiles == 1
    t.cuda_graphs = True  # as on CUDA: validation and previews go eager
    with t._side_calls():
        assert not model.layers_compiled
        torch.testing.assert_close(forward(), first)
    assert model._layer_fn is compiled and backend.compiles == 1  # the same function back: nothing recompiled
    forward()
    assert backend.compiles == 1
    t.cuda_graphs = False
    with t._side_calls():  # without graphs, validation and previews use the compiled layer as before
        assert model._layer_fn is compiled
