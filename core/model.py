"""HiDream-O1-Image: the stock transformers Qwen3-VL modules plus the three generation heads.

    from core.loading import load_model
    model = load_model("/path/to/HiDream-O1-Image", dtype=torch.bfloat16, device="cuda")
    out = model(input_ids=..., position_ids=..., vinputs=..., timestep=..., token_types=...)   # out.x_pred

The decoder layers are transformers' own; we run the loop over them ourselves so that we control
attention. A sequence is [AR tokens | generation tokens]: the AR tokens are everything before
`<|tms_token|>` (the chat-templated prompt, boi, and any vision placeholders), the generation tokens are
tms + target image (+ reference image) tokens. AR rows attend causally to AR tokens only; generation rows
attend to every real token. This is done with two SDPA calls per layer (never an S x S mask), through an
attention function registered with transformers' AttentionInterface that receives a per-call plan.

Batches whose prompts differ in length (see core.layout.collate) pad the AR part on the right, just
before tms, so that the split index is the same for every row; `text_lengths` holds each row's real
length of `input_ids` (AR tokens + tms). Pad keys are masked with a [B, 1, 1, S] key mask only.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers import AttentionInterface
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLTextModel,
    Qwen3VLTextRotaryEmbedding,
    Qwen3VLVisionModel,
    Qwen3VLVisionRotaryEmbedding,
)

ATTN_NAME = "o1lora_split"
KEY_GROUPS = 2  # PrefixCache.grouped: the runs of rows a CFG batch forms (prompt, negative)
DEFAULT_TMS_TOKEN_ID = 151673  # hard-coded in the official model; the tokenizer's id wins when known
PATCH = 32
PATCH_DIM = 3 * PATCH * PATCH  # 3072 numbers per 32x32 RGB patch


# ----------------------------------------------------------------------------- generation heads
class XEmbedder(nn.Module):
    """Raw 32x32x3 patches -> hidden, through a narrow (hidden/4) bottleneck."""

    def __init__(self, hidden: int, in_dim: int = PATCH_DIM):
        super().__init__()
        self.proj1 = nn.Linear(in_dim, hidden // 4, bias=False)
        self.proj2 = nn.Linear(hidden // 4, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x.to(self.proj1.weight.dtype)))


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, scale: float = 1000.0) -> torch.Tensor:
    """[B] -> [B, dim] float32: cos half first, then sin, of scale*t times geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int = PATCH_DIM):
        super().__init__()
        self.linear = nn.Linear(hidden, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class HiDreamInner(nn.Module):
    """The `model.` namespace of the official checkpoint."""

    def __init__(self, config: Qwen3VLConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.visual = Qwen3VLVisionModel(config.vision_config)  # plain constructors: the default dtype,
        self.language_model = Qwen3VLTextModel(config.text_config)  # whatever config.dtype says
        self.x_embedder = XEmbedder(hidden)
        self.t_embedder1 = TimestepEmbedder(hidden)
        self.final_layer2 = FinalLayer(hidden)


# ----------------------------------------------------------------------------- attention
@dataclass
class _AttnPlan:
    """What the attention function needs to know about the current call (passed through layer kwargs).

    mode: "split" (whole sequence, AR rows causal over AR, generation rows over all),
          "prefix" (AR tokens only: causal, and K/V are recorded),
          "denoise" (generation tokens only, keys = recorded prefix K/V + own K/V),
          "dense" (whole sequence, with the official dense additive mask; the oracle).
    """

    mode: str
    n_ar: int = 0
    key_mask: torch.Tensor | None = None  # [B, 1, 1, S_keys] bool, True = attend; None = all
    dense_mask: torch.Tensor | None = None  # [B, 1, S, S] additive float
    kv: dict = field(default_factory=dict)  # layer_idx -> (k, v), prefix mode writes, denoise mode reads
    # denoise mode: this layer's prefix (k, v), handed to each layer on its own so that one compiled layer
    # function serves all layers (reading kv[module.layer_idx] would specialise it on the layer index)
    layer_kv: tuple | None = None

    def for_layer(self, i: int) -> "_AttnPlan":
        if self.mode != "denoise":
            return self
        return _AttnPlan("denoise", n_ar=self.n_ar, key_mask=self.key_mask, layer_kv=self.kv[i])


def _sdpa(q, k, v, mask=None, causal=False, scale=None):
    if q.shape[1] != k.shape[1]:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
        # memory-efficient kernels take a mask but not always GQA; the repeated K/V are small next to scores
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def split_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, o1_plan=None, **kwargs):
    """AttentionInterface function: q/k/v are [B, heads, S, D]; returns ([B, S, heads, D], None)."""
    if o1_plan is None:
        raise RuntimeError("o1lora_split attention called without a plan: run the layers through HiDreamO1")
    p = o1_plan
    if p.mode == "split":
        a = p.n_ar
        parts = []
        if a > 0:  # right-padded AR rows need no mask: a real row's causal window never reaches a pad
            parts.append(_sdpa(query[:, :, :a], key[:, :, :a], value[:, :, :a], causal=True, scale=scaling))
        parts.append(_sdpa(query[:, :, a:], key, value, mask=p.key_mask, scale=scaling))
        out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    elif p.mode == "prefix":
        p.kv[module.layer_idx] = (key, value)
        out = _sdpa(query, key, value, causal=True, scale=scaling)
    elif p.mode == "denoise" and isinstance(p.layer_kv, list):
        # a grouped prefix (PrefixCache.grouped): each run of rows attends to its own unpadded prompt, no mask
        outs, start = [], 0
        for pk, pv in p.layer_kv:
            n = pk.shape[0]
            k, v = key[start : start + n], value[start : start + n]
            k, v = torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)
            outs.append(_sdpa(query[start : start + n], k, v, scale=scaling))
            start += n
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
    elif p.mode == "denoise":
        pk, pv = p.layer_kv if p.layer_kv is not None else p.kv[module.layer_idx]
        # (a prefix made outside autocast may differ in dtype: cast to the step's)
        out = _sdpa(
            query,
            torch.cat([pk.to(key.dtype), key], dim=2),
            torch.cat([pv.to(value.dtype), value], dim=2),
            mask=p.key_mask,
            scale=scaling,
        )
    elif p.mode == "dense":
        out = _sdpa(query, key, value, mask=p.dense_mask.to(query.dtype), scale=scaling)
    else:
        raise ValueError(f"unknown attention plan mode {p.mode!r}")
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, split_attention)


# ----------------------------------------------------------------------------- outputs and prefix
@dataclass
class HiDreamOutput:
    x_pred: torch.Tensor  # [B, S, 3072] (forward) or [B, N(+M), 3072] (denoise)


# A pytree node, so that torch utilities that walk a module's outputs see the tensor inside: DDP's static graph
# hooks the end of backward through the output tensors, and with an opaque output it never averaged the
# gradients (tests/core/test_train_dist.py compares it with a plain all-reduce).
pytree.register_pytree_node(
    HiDreamOutput, lambda out: ([out.x_pred], None), lambda values, _: HiDreamOutput(*values)
)


@dataclass
class PrefixCache:
    """K/V of every layer for the AR tokens of a batch of prompts, plus what denoise needs per step.

    kv[layer] = (k, v) [B, kv_heads, A, D]; gen_position_ids [3, B, G] for tms + image (+ reference)
    tokens; ar_lengths [B] real AR lengths (None when no row is padded).
    """

    kv: dict
    gen_position_ids: torch.Tensor
    n_ar: int
    ar_lengths: torch.Tensor | None = None
    # grouped(): row counts of the runs of rows; kv[layer] is then a list of each run's (k, v), unpadded
    groups: tuple[int, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.gen_position_ids.shape[1]

    def expand(self, copies: int) -> "PrefixCache":
        """Each prompt repeated `copies` times (sample-major: p0,p0,..,p1,p1,..), sharing storage."""
        if copies == 1:
            return self
        self._not_grouped("expand")

        def rep(x, dim):
            shape = list(x.shape)
            x = x.unsqueeze(dim + 1).expand(*shape[: dim + 1], copies, *shape[dim + 1 :])
            return x.flatten(dim, dim + 1)  # a view where possible; SDPA's cat copies once per step anyway

        kv = {i: (rep(k, 0), rep(v, 0)) for i, (k, v) in self.kv.items()}
        lengths = None if self.ar_lengths is None else self.ar_lengths.repeat_interleave(copies)
        return PrefixCache(kv, rep(self.gen_position_ids, 1), self.n_ar, lengths)

    def select(self, rows: torch.Tensor) -> "PrefixCache":
        """Row j of the result is row rows[j] of this prefix (e.g. [cond x k, uncond x k] for CFG)."""
        self._not_grouped("select")
        rows = torch.as_tensor(rows, device=self.gen_position_ids.device)
        kv = {i: (k.index_select(0, rows), v.index_select(0, rows)) for i, (k, v) in self.kv.items()}
        lengths = None if self.ar_lengths is None else self.ar_lengths.index_select(0, rows)
        return PrefixCache(kv, self.gen_position_ids.index_select(1, rows), self.n_ar, lengths)

    def grouped(self) -> "PrefixCache":
        """The same rows with the K/V cut to each run of rows' real prompt length, where the rows form exactly
        KEY_GROUPS runs of one length each (CFG: the prompt's rows, then the negative's): the denoise then
        attends per run, with no key mask. A mask costs SDPA its fastest kernel: on an H200 at 1024^2 a masked
        CFG call took 354 us against 123 us unmasked (bench/bench_attention.py). Other batches (one length, or
        more runs: joined requests) are returned as they are, masked. Reads the lengths on the host once."""
        if self.ar_lengths is None or self.groups is not None:
            return self
        runs: list[list[int]] = []  # [first row, rows, length]
        for row, n in enumerate(self.ar_lengths.tolist()):
            if runs and runs[-1][2] == n:
                runs[-1][1] += 1
            else:
                runs.append([row, 1, n])
        if len(runs) != KEY_GROUPS:
            return self

        def cut(x, first, rows, n):  # contiguous: compiled steps then see plain tensors whatever the padding
            return x[first : first + rows, :, :n].contiguous()

        kv = {i: [(cut(k, *r), cut(v, *r)) for r in runs] for i, (k, v) in self.kv.items()}
        return PrefixCache(kv, self.gen_position_ids, self.n_ar, None, tuple(r[1] for r in runs))

    def _not_grouped(self, what: str) -> None:
        if self.groups is not None:
            raise ValueError(f"{what} a grouped prefix: select and expand rows first, then group them")

    def kv_tensors(self) -> Iterator[torch.Tensor]:
        """Every K and V tensor (of every group, when grouped)."""
        return kv_tensors(self.kv)

    @property
    def kv_length(self):
        """The AR length as the K/V tensors give it: equal to n_ar, but under torch.compile a size that can
        be dynamic (the int attribute would be specialised, one compile per prompt length). 0 when grouped."""
        if self.groups is not None:
            return 0
        return next(iter(self.kv.values()))[0].shape[2]

    def key_mask(self, n_gen: int) -> torch.Tensor | None:
        if self.ar_lengths is None:
            return None
        return _key_mask(self.ar_lengths, self.kv_length, n_gen)


def kv_tensors(kv: dict) -> Iterator[torch.Tensor]:
    """Every K and V tensor of a prefix's per-layer K/V: a (k, v) pair per layer, or a list of them (grouped)."""
    for pairs in kv.values():
        for k, v in pairs if isinstance(pairs, list) else [pairs]:
            yield k
            yield v


def _key_mask(ar_lengths: torch.Tensor, n_ar: int, n_gen: int) -> torch.Tensor:
    """[B, 1, 1, n_ar + n_gen] bool: real AR keys and every generation key."""
    idx = torch.arange(n_ar + n_gen, device=ar_lengths.device)
    mask = (idx[None] < ar_lengths[:, None]) | (idx[None] >= n_ar)
    return mask[:, None, None, :]


# ----------------------------------------------------------------------------- the model
class HiDreamO1(nn.Module):
    def __init__(self, config: Qwen3VLConfig):
        super().__init__()
        self.config = config
        self.model = HiDreamInner(config)
        # Our loop passes a plan to the registered function; the vision tower keeps SDPA.
        self.model.language_model.config._attn_implementation = ATTN_NAME
        if getattr(self.model.visual.config, "_attn_implementation", None) in (None, "eager"):
            self.model.visual.config._attn_implementation = "sdpa"
        self.tms_token_id = DEFAULT_TMS_TOKEN_ID
        self.boi_token_id: int | None = None
        self.gradient_checkpointing = False
        # Value checks of the inputs (tms at the end, generation token types, text lengths) read device
        # tensors, i.e. block the host on the GPU once per forward; a trainer that builds its own layouts
        # on the CPU turns them off so steps queue back to back. Shape checks always run.
        self.validate_inputs = True
        self._layer_fn = run_layer  # torch.compile'd by compile_layers()

    # -- housekeeping ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.x_embedder.proj1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.x_embedder.proj1.weight.dtype

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        self.gradient_checkpointing = False

    def compile_layers(self, backend="inductor", mode: str | None = None, recompute_all: bool = True) -> None:
        """Regional torch.compile: one compiled function shared by every decoder layer (same code, the layer's
        weights as inputs), with gradient checkpointing traced inside it so that the backward's recompute runs
        compiled too (a checkpoint around a compiled module recomputes through saved-tensor hooks, which
        torch.compile does not trace). Sampling uses it too (Sampler(compile_scope="layers")): one layer's graph
        compiles in a fraction of the whole denoise's time, and a new shape recompiles only that small graph."""
        compiled = run_layer_recomputed if recompute_all else run_layer  # False: the partitioner's choice
        self._layer_fn = torch.compile(compiled, backend=backend, mode=mode)

    @contextmanager
    def layers_eager(self) -> Iterator[None]:
        """The decoder layers run uncompiled inside this block; the compiled function (the same object, so nothing
        recompiles) is back after it."""
        fn, self._layer_fn = self._layer_fn, run_layer
        try:
            yield
        finally:
            self._layer_fn = fn

    def eager_layers(self) -> None:
        """Undo compile_layers (a failed compilation falls back to this)."""
        self._layer_fn = run_layer

    @property
    def layers_compiled(self) -> bool:
        return self._layer_fn is not run_layer

    def get_input_embeddings(self):
        return self.model.language_model.embed_tokens

    def reset_rotary(self) -> None:
        """(Re)compute the rotary inverse frequencies in float32 on their module's device.

        `.to(bfloat16)` casts every float buffer; bf16 frequencies drift the phases at positions ~4096+
        (the image grid), so they are recomputed exactly after every cast, and after meta-device loading.
        """
        for m in self.modules():
            if not isinstance(m, (Qwen3VLTextRotaryEmbedding, Qwen3VLVisionRotaryEmbedding)):
                continue
            dev = m.inv_freq.device
            if dev.type == "meta":
                dev = self.device if self.device.type != "meta" else torch.device("cpu")
            if m.inv_freq.dtype == torch.float32 and m.inv_freq.device.type != "meta":
                continue
            fresh = _fresh_rotary(m, self.config)
            m.inv_freq = fresh.inv_freq.to(dev)
            m.original_inv_freq = fresh.inv_freq.clone().to(dev)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.reset_rotary()
        return out

    # -- the vision tower's residency ---------------------------------------------------------------
    def park_vision(self) -> bool:
        """Move the vision tower to host memory until a reference image needs it (vision_features brings it back
        and keeps it there): text-to-image never runs it, and at full size it is 1.07 GiB of bf16 weights. A no-op
        on the CPU; returns whether the tower is parked now."""
        visual = self.model.visual
        if visual.patch_embed.proj.weight.device.type not in ("cpu", "meta"):
            visual.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # handed back: memory plans read the free memory
        return self.vision_parked

    @property
    def vision_parked(self) -> bool:
        """The tower waits in host memory while the rest of the model is on an accelerator."""
        return self.model.visual.patch_embed.proj.weight.device.type == "cpu" and self.device.type != "cpu"

    # -- pieces -----------------------------------------------------------------------------------
    def vision_features(self, pixel_values, image_grid_thw):
        """Vision tower -> (embeds [n_pad, hidden], [deepstack embeds per layer])."""
        visual = self.model.visual
        if self.vision_parked:  # the first reference image since park_vision: the tower comes to stay
            visual.to(self.device)
        out = visual(pixel_values.to(visual.patch_embed.proj.weight.dtype), grid_thw=image_grid_thw)
        if isinstance(out, tuple):  # transformers 4.57 returns (merged, deepstack list)
            return out[0], list(out[1])
        return out.pooler_output, list(out.deepstack_features)

    def _ar_embeds(self, input_ids, pixel_values, image_grid_thw, vision=None):
        """Embeddings of the AR tokens, with vision features at the image-pad positions."""
        emb = self.model.language_model.embed_tokens(input_ids)
        pad_mask, deepstack = None, None
        if pixel_values is not None or vision is not None:
            embeds, deepstack = (
                vision if vision is not None else self.vision_features(pixel_values, image_grid_thw)
            )
            pad_mask = input_ids == self.config.image_token_id
            if input_ids.device.type == "cpu":
                n = int(pad_mask.sum())
                if n != embeds.shape[0]:
                    raise ValueError(
                        f"input_ids hold {n} <|image_pad|> tokens but the vision tower gave "
                        f"{embeds.shape[0]} features (check image_grid_thw / the layout)"
                    )
            else:  # the same check without waiting for the GPU (int() of a device tensor would, every step)
                torch._assert_async(pad_mask.sum() == embeds.shape[0], "<|image_pad|> tokens != vision features")
            emb = emb.masked_scatter(pad_mask[..., None], embeds.to(emb.dtype))
        return emb, pad_mask, deepstack

    def _gen_embeds(self, vinputs, timestep):
        """[t_embedder(t) at the tms slot | x_embedder(vinputs)] -> [B, 1 + N(+M), hidden]."""
        b = vinputs.shape[0]
        t = torch.as_tensor(timestep, device=vinputs.device).reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        if t.numel() != b:
            raise ValueError(f"timestep has {t.numel()} values for a batch of {b}")
        t_emb = self.model.t_embedder1(t)[:, None]
        x_emb = self.model.x_embedder(vinputs)
        return torch.cat([t_emb.to(x_emb.dtype), x_emb], dim=1)

    def _run_layers(self, hidden, position_ids, plan, deepstack_mask=None, deepstack=None):
        lm = self.model.language_model
        position_embeddings = lm.rotary_emb(hidden, position_ids)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        # the prefix pass records K/V per layer (a side effect keyed by layer index): it runs eagerly, once
        # per request; the compiled layer function serves the training forward and the denoise steps
        layer_fn = self._layer_fn if plan.mode in ("split", "denoise") else run_layer
        if plan.mode == "denoise" and layer_fn is not run_layer and not torch.compiler.is_compiling():
            _mark_step_dynamic(hidden, position_embeddings, plan)
        for i, layer in enumerate(lm.layers):
            # an offloaded layer (core.offload) runs eagerly: its weights are swapped in and out of slot memory
            fn = run_layer if getattr(layer, "_o1_offloaded", False) else layer_fn
            hidden = fn(layer, hidden, position_embeddings, plan.for_layer(i), ckpt)
            if deepstack is not None and i < len(deepstack):
                # DeepStack: add the vision tower's intermediate features at the image-pad positions
                mask = deepstack_mask
                if mask.shape[1] < hidden.shape[1]:
                    mask = F.pad(mask, (0, hidden.shape[1] - mask.shape[1]))
                add = torch.zeros_like(hidden).masked_scatter(mask[..., None], deepstack[i].to(hidden.dtype))
                hidden = hidden + add
        return lm.norm(hidden)

    def _check_layout(self, input_ids, token_types, n_gen_tokens):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if not self.validate_inputs:
            return
        if not bool((input_ids[:, -1] == self.tms_token_id).all()):
            raise ValueError(
                f"every row of input_ids must end with <|tms_token|> (id {self.tms_token_id}); "
                f"got last ids {input_ids[:, -1].tolist()}"
            )
        if token_types is not None:
            n_ar = input_ids.shape[1] - 1
            expect = n_ar + n_gen_tokens
            if token_types.shape[-1] != expect:
                raise ValueError(
                    f"token_types has length {token_types.shape[-1]}, expected {expect} "
                    f"(input_ids {input_ids.shape[1]} + vinputs {n_gen_tokens - 1})"
                )
            if bool((token_types[:, n_ar:] == 0).any()):
                raise ValueError("token_types must be > 0 from <|tms_token|> on (generation tokens)")

    def _ar_lengths(self, text_lengths, n_ar, device):
        if text_lengths is None:
            return None
        lengths = torch.as_tensor(text_lengths, device=device).reshape(-1) - 1  # minus the tms token
        if not self.validate_inputs:  # trusted caller: passes text_lengths only for padded batches
            return lengths
        if bool((lengths < 0).any()) or bool((lengths > n_ar).any()):
            raise ValueError(f"text_lengths {(lengths + 1).tolist()} must be in 1..{n_ar + 1}")
        return None if bool((lengths == n_ar).all()) else lengths

    # -- the three entry points ---------------------------------------------------------------------
    def forward(
        self,
        input_ids,
        position_ids,
        vinputs,
        timestep,
        token_types=None,
        pixel_values=None,
        image_grid_thw=None,
        text_lengths=None,
        vision=None,
        use_flash_attn=None,
    ) -> HiDreamOutput:
        """Official-compatible forward: x_pred at every position [B, L + N(+M), 3072].

        vision: optional precomputed (embeds, deepstack) from `vision_features`, reused across steps.
        use_flash_attn: accepted for call compatibility with the official code and ignored (SDPA picks
        the kernel; the masking semantics are the same).
        """
        self._check_layout(input_ids, token_types, 1 + vinputs.shape[1])
        n_ar = input_ids.shape[1] - 1
        ar, pad_mask, deepstack = self._ar_embeds(input_ids[:, :n_ar], pixel_values, image_grid_thw, vision)
        hidden = torch.cat([ar, self._gen_embeds(vinputs, timestep).to(ar.dtype)], dim=1)
        lengths = self._ar_lengths(text_lengths, n_ar, hidden.device)
        key_mask = None if lengths is None else _key_mask(lengths, n_ar, hidden.shape[1] - n_ar)
        plan = _AttnPlan("split", n_ar=n_ar, key_mask=key_mask)
        hidden = self._run_layers(hidden, position_ids, plan, pad_mask, deepstack)
        return HiDreamOutput(self.model.final_layer2(hidden))

    @torch.no_grad()
    def reference_forward(
        self,
        input_ids,
        position_ids,
        vinputs,
        timestep,
        token_types,
        pixel_values=None,
        image_grid_thw=None,
        text_lengths=None,
        vision=None,
        use_flash_attn=None,
    ) -> HiDreamOutput:
        """The official way: one full pass with a dense additive [B, 1, S, S] mask (oracle, benchmarks)."""
        b, n_text = input_ids.shape
        n_ar = n_text - 1
        ar, pad_mask, deepstack = self._ar_embeds(input_ids[:, :n_ar], pixel_values, image_grid_thw, vision)
        hidden = torch.cat([ar, self._gen_embeds(vinputs, timestep).to(ar.dtype)], dim=1)
        s = hidden.shape[1]
        idx = torch.arange(s, device=hidden.device)
        allowed = (idx[None, :] <= idx[:, None])[None].expand(b, s, s)  # causal
        allowed = allowed | (token_types[:, :, None] > 0)  # generation rows see everything
        lengths = self._ar_lengths(text_lengths, n_ar, hidden.device)
        if lengths is not None:
            allowed = allowed & _key_mask(lengths, n_ar, s - n_ar)[:, 0]
        dense = torch.zeros(b, 1, s, s, device=hidden.device, dtype=torch.float32)
        dense.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
        plan = _AttnPlan("dense", dense_mask=dense)
        hidden = self._run_layers(hidden, position_ids, plan, pad_mask, deepstack)
        return HiDreamOutput(self.model.final_layer2(hidden))

    def encode_prefix(
        self,
        batch=None,
        *,
        input_ids=None,
        position_ids=None,
        pixel_values=None,
        image_grid_thw=None,
        text_lengths=None,
        vision=None,
    ) -> PrefixCache:
        """K/V of the AR tokens (everything before tms), once per prompt.

        Takes a core.layout Batch (or the same fields as keywords); position_ids must cover the whole
        sequence [3, B, S] since the generation tokens' positions are kept for `denoise`.
        """
        if batch is not None:
            input_ids = batch.input_ids
            position_ids = batch.position_ids
            text_lengths = getattr(batch, "text_lengths", None)
            pixel_values = getattr(batch, "pixel_values", None)
            image_grid_thw = getattr(batch, "image_grid_thw", None)
        self._check_layout(input_ids, None, 0)
        n_ar = input_ids.shape[1] - 1
        ar, pad_mask, deepstack = self._ar_embeds(input_ids[:, :n_ar], pixel_values, image_grid_thw, vision)
        if n_ar == 0:
            raise ValueError("input_ids hold no AR tokens before <|tms_token|>")
        plan = _AttnPlan("prefix")
        self._run_layers(ar, position_ids[:, :, :n_ar], plan, pad_mask, deepstack)
        return PrefixCache(
            plan.kv, position_ids[:, :, n_ar:], n_ar, self._ar_lengths(text_lengths, n_ar, ar.device)
        )

    def denoise(self, prefix: PrefixCache, vinputs, timestep) -> torch.Tensor:
        """x_pred at the image (+ reference) positions only: [B, N(+M), 3072]."""
        if vinputs.shape[0] != prefix.batch_size:
            raise ValueError(
                f"vinputs batch {vinputs.shape[0]} != prefix batch {prefix.batch_size} "
                f"(use prefix.expand(copies) for several images per prompt)"
            )
        hidden = self._gen_embeds(vinputs, timestep)
        if hidden.shape[1] != prefix.gen_position_ids.shape[-1]:
            raise ValueError(
                f"vinputs have {vinputs.shape[1]} tokens but the layout has "
                f"{prefix.gen_position_ids.shape[-1] - 1} image positions"
            )
        plan = _AttnPlan("denoise", n_ar=prefix.kv_length, key_mask=prefix.key_mask(hidden.shape[1]), kv=prefix.kv)
        hidden = self._run_layers(hidden, prefix.gen_position_ids, plan)
        return self.model.final_layer2(hidden[:, 1:])


def _mark_step_dynamic(hidden, position_embeddings, plan) -> None:
    """For the compiled layer of a denoise step: the prompt length (prefix keys) is dynamic, and the batch
    when above 1, so that one graph per image size serves every prompt and batch (as the sampler marks its
    whole-step inputs). `maybe_`: a backend may still specialise; it then recompiles, never fails."""
    mark = torch._dynamo.maybe_mark_dynamic
    batched = hidden.shape[0] > 1
    for x in (hidden, *position_embeddings, plan.key_mask):
        if x is not None and batched:
            mark(x, 0)
    if plan.key_mask is not None:
        mark(plan.key_mask, 3)
    for x in kv_tensors(plan.kv):
        mark(x, 2)
        if x.shape[0] > 1:  # a grouped prefix's runs of one row stay static (as a single-row batch does)
            mark(x, 0)


def run_layer(layer, hidden, position_embeddings, plan, ckpt: bool):
    """One decoder layer, recomputed in backward when `ckpt` (gradient checkpointing)."""
    if ckpt:
        return checkpoint(
            layer, hidden, position_embeddings=position_embeddings, o1_plan=plan, use_reentrant=False
        )
    return layer(hidden, position_embeddings=position_embeddings, o1_plan=plan)


def _recompute_everything(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_RECOMPUTE


def _recompute_everything_context():
    return create_selective_checkpoint_contexts(_recompute_everything)


class _KnownCheckpointPolicyNote(logging.Filter):
    """Drops torch's once-per-process note that a context_fn reached a compiled checkpoint ("make sure the region
    has no in-place ops"): ours recomputes everything, and tests/core/test_compiled_checkpoint.py checks that the
    compiled layer's loss and LoRA gradients equal the eager layer's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "context_fn is passed to torch.utils.checkpoint" not in record.getMessage()


logging.getLogger("torch._higher_order_ops.wrap").addFilter(_KnownCheckpointPolicyNote())


def run_layer_recomputed(layer, hidden, position_embeddings, plan, ckpt: bool):
    """run_layer for torch.compile: its checkpoint tells the partitioner to recompute every op of the layer.
    Without the policy, inductor's partitioner kept the outputs of the fp8 base's matmuls (torch._scaled_mm
    inside core.fp8's autograd.Function: gate and up 25 MB each, q, k, v, o) for the backward of a checkpointed
    layer: 2.9 GiB more than eager for a 1024^2 sample at full size (bench/probe_fp8_train_memory.py on an H200,
    bench/RESULTS.md), while the plain mm of a bf16 base was recomputed. The policy is read while tracing only:
    eager layers keep run_layer (a selective-checkpoint context costs a dispatch mode per op)."""
    if ckpt:
        return checkpoint(
            layer,
            hidden,
            position_embeddings=position_embeddings,
            o1_plan=plan,
            use_reentrant=False,
            context_fn=_recompute_everything_context,
        )
    return layer(hidden, position_embeddings=position_embeddings, o1_plan=plan)


def _fresh_rotary(m: nn.Module, config: Qwen3VLConfig) -> nn.Module:
    """A new CPU float32 copy of a rotary module (signatures differ between transformers 4.57 and 5.x)."""
    with torch.device("cpu"):
        if isinstance(m, Qwen3VLTextRotaryEmbedding):
            return Qwen3VLTextRotaryEmbedding(config=config.text_config)
        vc = config.vision_config
        try:
            return Qwen3VLVisionRotaryEmbedding(vc)
        except (TypeError, AttributeError):
            return Qwen3VLVisionRotaryEmbedding(vc.hidden_size // vc.num_heads // 2)
