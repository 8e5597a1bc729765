"""Put trainable PEFT LoRA layers on a HiDreamO1 model and freeze everything else.

    from core.lora import LoraSpec, inject_lora
    peft_cfg = inject_lora(model, LoraSpec(rank=16, alpha=16))   # 252 linears at full size

The default targets are the recipe's: q/k/v/o/gate/up/down of every `language_model` layer. The vision
tower, embeddings, norms, `t_embedder1` stay frozen; `x_embedder` and `final_layer2` can be added.
Module paths are those of the model's state dict ("model.language_model.layers.0.self_attn.q_proj"),
which is what every export and import in this package is keyed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

# Extra targets by the short names users type; each is a regex over module paths.
EXTRA_TARGETS = {
    "x_embedder": r"model\.x_embedder\.proj[12]",
    "final_layer2": r"model\.final_layer2\.linear",
}
LM_PATTERN = (
    r"model\.language_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16  # the recipe's rank (~44M parameters at full size)
    alpha: float = 16.0  # scale alpha/rank = 1, as the recipe
    dropout: float = 0.0  # the recipe uses none
    extra_targets: tuple[str, ...] = field(default_factory=tuple)  # subset of EXTRA_TARGETS keys

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.extra_targets if t not in EXTRA_TARGETS]
        if unknown:
            raise ValueError(f"unknown extra LoRA targets {unknown}; known: {sorted(EXTRA_TARGETS)}")

    @property
    def pattern(self) -> str:
        """One regex, full-matched by PEFT against module paths (and saved in adapter_config.json)."""
        return "|".join([LM_PATTERN] + [EXTRA_TARGETS[t] for t in self.extra_targets])


def target_names(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The nn.Linear paths the spec selects, in model order; an empty match is an error."""
    rx = re.compile(spec.pattern)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and rx.fullmatch(n)]
    if not names:
        raise ValueError(
            "no LoRA target found: the model has no model.language_model.layers.*.(q|k|v|o|gate|up|down)_proj"
        )
    return names


def inject_lora(model: nn.Module, spec: LoraSpec, adapter_dtype: torch.dtype = torch.float32):
    """Add PEFT LoRA layers in place, freeze the base, keep adapter weights in `adapter_dtype`.

    Returns the peft LoraConfig. PEFT initialises A randomly and B to zero, so the model's output is
    unchanged until training moves B.
    """
    from peft import LoraConfig, inject_adapter_in_model

    target_names(model, spec)  # fail early with a clear message
    cfg = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.pattern,
        bias="none",
        init_lora_weights=True,
    )
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        p.requires_grad_(is_lora)
        if is_lora and p.dtype != adapter_dtype:
            # float32 adapter weights even on a bf16 base: tiny updates would round away in bf16
            p.data = p.data.to(adapter_dtype)
    return cfg


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def set_adapter_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every PEFT LoRA layer on or off (previews render with and without the adapter)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.enable_adapters(enabled)


def adapter_state_dict(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{"<module path>.lora_A.weight" / ".lora_B.weight": tensor}: the adapter alone, named as PEFT saves it."""
    tag = f".{adapter}."
    return {
        n.replace(tag, "."): p.detach()
        for n, p in model.named_parameters()
        if (".lora_A" + tag in n or ".lora_B" + tag in n)
    }


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter: str = "default") -> None:
    """Inverse of adapter_state_dict on a model with the same injected layers; every key must land."""
    params = dict(model.named_parameters())
    own = set(adapter_state_dict(model, adapter))
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"adapter state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for k, v in state.items():
            for part in (".lora_A.", ".lora_B."):
                if part in k:
                    p = params[k.replace(part, f"{part}{adapter}.")]
                    if p.shape != v.shape:
                        raise ValueError(f"{k}: shape {tuple(v.shape)} in the file, {tuple(p.shape)} in the model")
                    p.copy_(v)
