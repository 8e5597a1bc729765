"""Sampling presets of the official checkpoints, and the official ~4 MP output sizes.

    from core.presets import PRESETS, snap_resolution
    PRESETS["full"]               # HiDream-O1-Image: UniPC, 50 steps, CFG 5, shift 3, noise 8
    snap_resolution(1000, 600)    # -> (2560, 1440): the official size closest in aspect ratio

Imports no torch: the HTTP API takes its generation defaults from PRESETS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# The dev checkpoints were distilled on this fixed list; `set_timesteps(28)` is ignored for them.
DEV_TIMESTEPS: tuple[int, ...] = (
    999,
    987,
    974,
    960,
    945,
    929,
    913,
    895,
    877,
    857,
    836,
    814,
    790,
    764,
    737,
    707,
    675,
    640,
    602,
    560,
    515,
    464,
    409,
    347,
    278,
    199,
    110,
    8,
)

# The samplers core.schedulers builds (make_scheduler), by name.
SCHEDULERS = ("unipc", "flash", "euler")


@dataclass(frozen=True)
class Preset:
    """How one checkpoint family samples (values read off the official inference code)."""

    name: str
    scheduler: str  # "unipc" | "flash" | "euler" (see core.schedulers)
    steps: int  # scheduler steps (flash/euler with a fixed list: the list's length)
    guidance: float  # CFG scale; CFG runs only when > 1, as in the official pipeline
    shift: float  # time shift of the schedule (UniPC / Euler)
    noise_scale: float  # std of the initial latent z = s * N(0, 1)
    s_noise: float = 0.0  # flash only: scale of the noise re-injected at every step
    noise_clip_std: float = 0.0  # flash only: clip that noise at this many of its stds (0 = off)
    timesteps: tuple[int, ...] | None = None  # a fixed timestep list (the distilled dev models)

    def with_overrides(self, **kw) -> "Preset":
        """A copy with the non-None keyword values replaced (steps, guidance, scheduler, shift ...)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preset fields: {sorted(unknown)}")
        out = replace(self, **kw)
        if "scheduler" in kw and kw["scheduler"] == "unipc":
            out = replace(out, timesteps=None)  # UniPC builds its own schedule
        if out.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {out.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if out.scheduler == "flash" and (out.timesteps is None or out.s_noise <= 0):
            raise ValueError(
                f"the flash scheduler is the distilled dev models' sampler (fixed timesteps, "
                f"re-noising); use preset='dev' rather than preset={self.name!r}"
            )
        if "steps" in kw and out.timesteps is not None and kw["steps"] != len(out.timesteps):
            raise ValueError(
                f"preset {self.name!r} runs a fixed list of {len(out.timesteps)} timesteps; "
                f"steps={kw['steps']} needs another scheduler (e.g. scheduler='unipc')"
            )
        return out


PRESETS: dict[str, Preset] = {
    # HiDream-O1-Image
    "full": Preset("full", "unipc", steps=50, guidance=5.0, shift=3.0, noise_scale=8.0),
    # HiDream-O1-Image-Dev(-2604): distilled, no CFG, stochastic Euler on a fixed list
    "dev": Preset(
        "dev",
        "flash",
        steps=len(DEV_TIMESTEPS),
        guidance=0.0,
        shift=1.0,
        noise_scale=7.5,
        s_noise=7.5,
        noise_clip_std=2.5,
        timesteps=DEV_TIMESTEPS,
    ),
    # the dev models' editing default (inference.py --editing_scheduler flow_match): plain Euler on the list
    "dev-edit": Preset(
        "dev-edit",
        "euler",
        steps=len(DEV_TIMESTEPS),
        guidance=0.0,
        shift=1.0,
        noise_scale=8.0,
        timesteps=DEV_TIMESTEPS,
    ),
}

# The bundled models/o1-shapes (15M) samples best with the full preset at fewer steps and lower CFG: CFG 5 overshoots
# it (speckle in the 32-px patches around shapes, wrong colours) and 30-50 steps add nothing; CFG 2 had every
# background, region and colour right with the least speckle (docs/evidence.md, section 1).
BUNDLED_MODEL_SAMPLING = {"steps": 20, "guidance": 2.0}

# The official pipeline snaps every request to the closest aspect ratio among these (width, height).
OFFICIAL_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (2048, 2048),
    (2304, 1728),
    (1728, 2304),
    (2560, 1440),
    (1440, 2560),
    (2496, 1664),
    (1664, 2496),
    (3104, 1312),
    (1312, 3104),
    (2304, 1792),
    (1792, 2304),
)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def snap_resolution(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the official size whose aspect ratio is closest (first one on ties)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    ratio = width / height
    return min(OFFICIAL_RESOLUTIONS, key=lambda wh: abs(wh[0] / wh[1] - ratio))
