"""The compiled decoder layer under gradient checkpointing recomputes everything (core.model.run_layer_recomputed),
and a text-to-image training leaves the vision tower in host memory (core.train.Trainer._vision_to_host).

On the CPU: the compiled, recomputing layer gives the eager layer's loss and LoRA gradients on an fp8 base (the
scaled path, through the CPU build's _scaled_mm) and on a full-precision one, and the ops it traces are all
tagged to be recomputed. On CUDA (marked gpu): what one forward keeps for its backward matches eager, and the
vision tower's weights are on the host during a text-to-image run and on the GPU for an edit dataset.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from core.fp8 import convert_to_fp8
from core.tiny import TinySpec, build_model
from core.train.data import Prefetch, StreamData
from core.train.trainer import TrainConfig, Trainer

SPEC = TinySpec(hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16, mlp=160)


def stream(size: int):
    def make(start: int):
        i = start
        while True:
            g = torch.Generator().manual_seed(i)
            yield torch.rand(3, size, size, generator=g) * 2 - 1, f"picture {i % 3} of shapes"
            i += 1

    return make


def trainer_for(base: str, out: str, device: str = "cpu", size: int = 64) -> Trainer:
    model, tok = build_model(SPEC, seed=1)
    if base == "fp8":
        convert_to_fp8(model, matmul="scaled")
    cfg = TrainConfig(
        model_path="<random>",
        out_dir=out,
        resolution=size,
        steps=10,
        rank=4,
        alpha=4.0,
        device=device,
        precision="fp32" if device == "cpu" else "bf16",
        base_precision=base,
        gradient_checkpointing=True,
        compile=False,
        cuda_graphs=False,
        checkpoint_every=0,
        sample_every=0,
        validation_fraction=0.0,
    )
    return Trainer(cfg, data=StreamData(stream(size), 1), model=model, tokenizer=tok)


def loss_and_grads(trainer: Trainer, images, captions) -> tuple[float, list[torch.Tensor]]:
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.generator.manual_seed(7)  # the same noise and sigma for both runs
    loss = trainer.loss(images, captions)
    loss.backward()
    return float(loss.detach()), [p.grad.detach().clone() for p in trainer.params]


@pytest.mark.parametrize("base", ["fp8", "bf16"])
def test_the_compiled_checkpointed_layer_gives_the_eager_gradients(base, tmp_path):
    if base == "fp8" and not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch has no _scaled_mm")
    trainer = trainer_for(base, str(tmp_path))
    batches = Prefetch(iter(trainer.data), 2)
    try:
        images, captions, *_ = next(batches)
    finally:
        batches.close()
    eager_loss, eager = loss_and_grads(trainer, images, captions)
    trainer.model.compile_layers("aot_eager")
    compiled_loss, compiled = loss_and_grads(trainer, images, captions)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert len(eager) == len(compiled) > 0
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in compiled)


def test_every_op_of_the_compiled_checkpointed_layer_is_tagged_for_recompute(tmp_path):
    """The partitioner saves what it is not told to recompute: on an H200 it kept the fp8 matmuls' outputs
    (2.9 GiB at 1024^2, bench/RESULTS.md). Capture the joint graph and read every op's tag."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch.utils.checkpoint import CheckpointPolicy

    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch has no _scaled_mm")
    tags: list = []

    def partition(joint, joint_inputs, **kwargs):
        from torch._functorch.partitioners import default_partition

        for node in joint.graph.nodes:
            if node.op == "call_function" and "recompute" in node.meta:
                tags.append((str(node.target), node.meta["recompute"]))
        return default_partition(joint, joint_inputs, **kwargs)

    def boxed(gm, example_inputs):
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition)
    trainer = trainer_for("fp8", str(tmp_path))
    batches = Prefetch(iter(trainer.data), 2)
    try:
        images, captions, *_ = next(batches)
    finally:
        batches.close()
    trainer.model.compile_layers(backend)
    loss_and_grads(trainer, images, captions)
    matmuls = {t for target, t in tags if target.startswith(("aten._scaled_mm", "aten.mm"))}
    assert any(target.startswith("aten._scaled_mm") for target, _ in tags), "the fp8 matmul was not traced"
    assert matmuls == {CheckpointPolicy.MUST_RECOMPUTE}
    # nothing is marked to be saved (a detach the policy is not asked about stays "may recompute")
    assert {t for _, t in tags} <= {CheckpointPolicy.MUST_RECOMPUTE, CheckpointPolicy.PREFER_RECOMPUTE}

    # the partitioner's own choice (before): the matmuls only "may" be recomputed, which it was free to overrule
    tags.clear()
    torch._dynamo.reset()
    trainer.model.compile_layers(backend, recompute_all=False)
    loss_and_grads(trainer, images, captions)
    matmuls = {t for target, t in tags if target.startswith(("aten._scaled_mm", "aten.mm"))}
    assert matmuls == {CheckpointPolicy.PREFER_RECOMPUTE}


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_fp8_forward_keeps_what_eager_keeps(tmp_path):
    from core.fp8 import fp8_matmul_supported

    if not fp8_matmul_supported("cuda"):
        pytest.skip("no fp8 matmuls on this GPU")
    kept = {}
    trainer = trainer_for("fp8", str(tmp_path), device="cuda", size=256)
    batches = Prefetch(iter(trainer.data), 2)
    try:
        images, captions, *_ = next(batches)
        for how in ("eager", "compiled"):
            if how == "compiled":
                trainer.model.compile_layers()
            loss_and_grads(trainer, images, captions)  # warm (compile)
            trainer.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            loss = trainer.loss(images, captions)
            torch.cuda.synchronize()
            kept[how] = torch.cuda.memory_allocated() - before
            loss.backward()
    finally:
        batches.close()
    assert kept["compiled"] <= 1.1 * kept["eager"] + 2**20, kept


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_text_to_image_training_keeps_the_vision_tower_on_the_host():
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for("bf16", tmp, device="cuda")
        assert trainer.model.vision_parked
        assert {p.device.type for p in trainer.model.model.visual.parameters()} == {"cpu"}
        assert {p.device.type for p in trainer.model.model.language_model.parameters()} == {"cuda"}
        batches = Prefetch(iter(trainer.data), 2)
        try:
            assert torch.isfinite(trainer.train_step(batches))
        finally:
            batches.close()
