"""An fp8 frozen base: the decoder layers' linears held in float8 (e4m3) with one scale per output channel.

    model = load_model(path, torch.bfloat16, "cuda", base_precision="fp8")    # converted while loading
    convert_to_fp8(model)                                                     # or an already built model

Which linears: q/k/v/o/gate/up/down of every language_model layer, the 252 linears that hold 7.0 of the
8.2B parameters at full size (the LoRA targets). Embeddings, norms, the vision tower and the generation
heads stay in the model's dtype: they are 1.2B parameters and the tokens' entry and exit points.

How a converted linear (Fp8Linear) multiplies, chosen per module when it is made:
- "scaled" (CUDA with compute capability >= 8.9: Ada, Hopper and later, through torch._scaled_mm): the input
  is quantised to e4m3 per row (per token) on the fly, the fp8 x fp8 product accumulates in float32 and the
  two scales (row, output channel) are applied to it; the output is bf16. Twice the bf16 tensor-core rate.
- "weight_only" (elsewhere: CPUs, older GPUs): the weight is dequantised to the compute dtype just before an
  ordinary matmul. Half the weight memory, no speed-up.

Backward (training a LoRA on the frozen base): the base needs no weight gradient, only the gradient of its
input, and that is computed in bf16 (grad x scale, times the weight cast to bf16), not in fp8. Why: with
gradient checkpointing the base runs three matmuls per linear and step (forward, recompute, input gradient);
the two forwards go through fp8, so most of the gain is kept, while the gradient, which flows back through
all 36 layers to reach every LoRA and has a wider range than the activations, keeps bf16's 8 mantissa bits
instead of e4m3's 3 (or e5m2's 2). An fp8 backward would also need a transposed copy of each weight.

LoRA math is untouched: PEFT's layers and the sampler's LoRA slots add their bf16/fp32 delta to the output of
the converted linear (they read `compute_dtype`, not the fp8 weight's dtype).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from core.lora.inject import LM_PATTERN
from core.train.config import BASE_PRECISIONS as PRECISIONS  # "auto", "bf16", "fp8" (torch-free, for the API)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# Below this much GPU memory a card without fp8 matmuls still gets an fp8 base by default: the bf16 base
# (15.2 GiB at full size) does not fit with activations on 16 GB cards, the weight-only fp8 one does.
SMALL_CARD_BYTES = 20 * 2**30
_SCALED_MM_MIN_CAPABILITY = (8, 9)
_CONVERTED = re.compile(LM_PATTERN)


# ----------------------------------------------------------------------------- which precision
def fp8_matmul_supported(device) -> bool:
    """Whether `device` multiplies fp8 x fp8 natively (torch._scaled_mm on a CUDA card of capability 8.9+)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= _SCALED_MM_MIN_CAPABILITY


def default_base_precision(device) -> str:
    """The card's default: fp8 where fp8 matmuls exist (faster and half the weights), or on a GPU too small for
    the bf16 base; bf16 otherwise (on CPUs: the bundled model keeps its float32 compute, nothing changes)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "bf16"
    if fp8_matmul_supported(device):
        return "fp8"
    total = torch.cuda.get_device_properties(device).total_memory
    return "fp8" if total < SMALL_CARD_BYTES else "bf16"


def resolve_base_precision(choice: str | None, device) -> str:
    """'auto' / None -> the card's default; 'bf16' / 'fp8' as given; anything else is a ValueError."""
    if choice in (None, "auto"):
        return default_base_precision(device)
    if choice not in PRECISIONS:
        raise ValueError(f"base_precision must be one of {', '.join(PRECISIONS)}; got {choice!r}")
    return choice


# ----------------------------------------------------------------------------- quantisation
@torch.no_grad()
def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (e4m3 [out, in], float32 scale [out]): each output channel's absolute maximum maps to 448,
    e4m3's largest value, so a row's values keep 3 mantissa bits relative to their own range."""
    if w.ndim != 2:
        raise ValueError(f"quantize_weight wants a 2-D weight, got shape {tuple(w.shape)}")
    wf = w.to(torch.float32, copy=True)
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = wf.div_(scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight back in `dtype` (what the weight-only path multiplies with)."""
    return q.to(dtype) * scale.to(dtype)[:, None]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (e4m3 [M, K], float32 scale [M, 1]): one scale per row (per token), from its absolute maximum."""
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _scaled_mm(x2d: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """x2d [M, K] (bf16/fp32) times q^T [K, N] (e4m3, row-major [N, K] = the column-major operand _scaled_mm
    wants) -> [M, N] in out_dtype, float32 accumulation, row and channel scales applied to the accumulator."""
    xq, xs = quantize_rows(x2d)
    out = torch._scaled_mm(xq.contiguous(), q.t(), scale_a=xs, scale_b=scale.view(1, -1), out_dtype=out_dtype)
    return out[0] if isinstance(out, tuple) else out  # older torch returned (out, amax)


class _Fp8Matmul(torch.autograd.Function):
    """The scaled fp8 forward with a bf16 input gradient (see the module docstring for why bf16)."""

    @staticmethod
    def forward(ctx, x2d, q, scale, out_dtype):
        ctx.save_for_backward(q, scale)
        ctx.x_dtype = x2d.dtype
        return _scaled_mm(x2d, q, scale, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        q, scale = ctx.saved_tensors
        # grad_x = grad @ (diag(scale) q): the channel scale folded into the gradient's columns
        gx = torch.mm(grad * scale.to(grad.dtype), q.to(grad.dtype))
        return gx.to(ctx.x_dtype), None, None, None


def _compute_dtype(x: torch.Tensor, default: torch.dtype) -> torch.dtype:
    """Autocast's dtype where autocast is on for x's device (the trainer and sampler run under it), else the
    module's own compute dtype."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return default


# ----------------------------------------------------------------------------- the module
class Fp8Linear(nn.Linear):
    """nn.Linear whose frozen weight is e4m3 [out, in] with a float32 scale per output channel.

    Still an nn.Linear (PEFT wraps it, LoRA targets select it); `compute_dtype` is the dtype the output and
    any LoRA delta are in (PEFT and core.lora.slots read it). `scaled_mm` picks the multiply (module doc).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        compute_dtype: torch.dtype = torch.bfloat16,
        scaled_mm: bool = False,
        device=None,
    ):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a weight in the compute dtype
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.scaled_mm = compute_dtype, scaled_mm
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device), False)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device)) if bias else None

    @classmethod
    def like(cls, linear: nn.Linear, compute_dtype: torch.dtype, scaled_mm: bool) -> "Fp8Linear":
        """An empty Fp8Linear of the same shape, on the linear's device (meta while loading)."""
        dev = linear.weight.device
        return cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype, scaled_mm, dev)

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantise a full-precision weight into this module, on w's device (the GPU while loading: the
        full-precision tensor exists only until this returns)."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight shape {tuple(w.shape)} != ({self.out_features}, {self.in_features})")
        q, scale = quantize_weight(w)
        self._parameters["weight"] = nn.Parameter(q, requires_grad=False)
        self._buffers["weight_scale"] = scale

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype or self.compute_dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # a full-precision state dict (no scales) loads by quantising, never by a plain cast into fp8
        w = state_dict.get(prefix + "weight")
        if w is not None and w.dtype != FP8 and (prefix + "weight_scale") not in state_dict:
            state_dict = dict(state_dict)
            self.load_weight(state_dict.pop(prefix + "weight").to(self.weight.device))
            state_dict[prefix + "weight"], state_dict[prefix + "weight_scale"] = self.weight, self.weight_scale
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x, self.compute_dtype)
        x = x.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        # CUDA's row-scaled fp8 matmul writes bf16 only: a float32 computation there goes weight-only
        if self.scaled_mm and (dtype == torch.bfloat16 or not x.is_cuda):
            x2d = x.reshape(-1, self.in_features)
            if torch.is_grad_enabled() and x.requires_grad:
                out = _Fp8Matmul.apply(x2d, self.weight, self.weight_scale, dtype)
            else:
                out = _scaled_mm(x2d, self.weight, self.weight_scale, dtype)
            out = out.view(*x.shape[:-1], self.out_features)
            return out if bias is None else out + bias
        return F.linear(x, self.dequantized(dtype), bias)

    def extra_repr(self) -> str:
        mode = "scaled_mm" if self.scaled_mm else "weight-only"
        return f"{super().extra_repr()}, fp8 e4m3 per-channel, {mode}, compute {self.compute_dtype}"


# ----------------------------------------------------------------------------- converting a model
def fp8_target(name: str, module: nn.Module) -> bool:
    """The linears an fp8 base converts (by state-dict path)."""
    return isinstance(module, nn.Linear) and not isinstance(module, Fp8Linear) and bool(_CONVERTED.fullmatch(name))


def scaled_mm_for(device, in_features: int, out_features: int, compute_dtype: torch.dtype, matmul: str) -> bool:
    """Whether a converted linear uses the scaled fp8 matmul. matmul: "auto" (where the card has it, in bf16,
    and both sides are multiples of 16 as _scaled_mm requires), "scaled" (also on CPUs, whose torch has a
    _scaled_mm: tests and the CPU quality measure use it to run the GPU path's numerics), "weight_only"."""
    if matmul not in ("auto", "scaled", "weight_only"):
        raise ValueError(f"matmul must be 'auto', 'scaled' or 'weight_only', got {matmul!r}")
    if matmul == "weight_only" or in_features % 16 or out_features % 16:
        return False
    if matmul == "scaled":
        return True
    return compute_dtype == torch.bfloat16 and fp8_matmul_supported(device)


def replace_with_fp8(model: nn.Module, compute_dtype: torch.dtype, device, matmul: str = "auto") -> list[str]:
    """Swap every target linear for an empty Fp8Linear (on the linear's device, e.g. meta before loading);
    returns their paths. The loader then fills each one with Fp8Linear.load_weight."""
    names = [n for n, m in model.named_modules() if fp8_target(n, m)]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        old = model.get_submodule(name)
        new = Fp8Linear.like(
            old, compute_dtype, scaled_mm_for(device, old.in_features, old.out_features, compute_dtype, matmul)
        )
        setattr(model.get_submodule(parent), leaf, new)
    return names


@torch.no_grad()
def convert_to_fp8(model: nn.Module, matmul: str = "auto") -> nn.Module:
    """Convert a built model's target linears in place, one at a time (each full-precision weight is dropped as
    its fp8 copy is made); returns the model. The compute dtype is each weight's own dtype."""
    for name in [n for n, m in model.named_modules() if fp8_target(n, m)]:
        parent, _, leaf = name.rpartition(".")
        old = model.get_submodule(name)
        w = old.weight
        new = Fp8Linear.like(
            old, w.dtype, scaled_mm_for(w.device, old.in_features, old.out_features, w.dtype, matmul)
        )
        new.load_weight(w.detach())
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().clone(), requires_grad=False)
        setattr(model.get_submodule(parent), leaf, new)
        del old, w
    return model


def fp8_linears(model: nn.Module) -> dict[str, Fp8Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Fp8Linear)}


def base_precision_of(model: nn.Module) -> str:
    """'fp8' when the model's base linears are converted, else 'bf16' (the model's own dtype)."""
    return "fp8" if fp8_linears(model) else "bf16"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the base costs in memory)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
