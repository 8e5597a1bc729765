"""Text-to-image sampling with HiDream-O1: presets, CFG as one batch, the text prefix encoded once.

    from core.loading import load_model, load_tokenizer
    from core.sampler import Sampler
    sampler = Sampler(load_model(path, torch.bfloat16, "cuda"), load_tokenizer(path))
    images = sampler(["a red circle"], width=1024, height=1024, seed=0, preset="full")   # list[PIL.Image]

Per request: the prompts and the negative prompt are laid out, right-padded into one batch, and their
K/V prefix (everything before <|tms_token|>) is computed once by `model.encode_prefix`. Each step then
runs only the generation tokens of every image, cond and uncond rows together, through `model.denoise`
(`Sampler(..., cfg_batch=False)`: cond and uncond as two unpadded calls; `cuda_graph=True`: the step's
denoise replayed as a CUDA graph).
Per step, at scheduler timestep T: sigma = T/1000, the model sees t = 1 - sigma,
v = (x_pred - z) / max(sigma, 1e-3), CFG v = v_u + g (v_c - v_u), and the scheduler gets -v, as in the
official pipeline. The latent is kept in the model's dtype between steps (the official bf16 state).

`Sampler.reference(...)` is the plain loop (one full forward per image and per cond/uncond, no cache):
the oracle the fast path is tested against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core.layout import build_edit, build_t2i, check_size, collate, patchify, prepare_references, unpatchify
from core.presets import Preset, get_preset, snap_resolution
from core.schedulers import make_scheduler
from core.step_graphs import GraphedCall, KeptSteps, prefix_signature, writable

log = logging.getLogger(__name__)

T_EPS = 1e-3  # sigma floor of the velocity, as the official pipeline
# callback(step, total, preview): step counts finished steps (1..total); preview is the x0 prediction of
# the request's first image as a PIL image on preview steps, else None.
Callback = Callable[[int, int, "Image.Image | None"], None]


@dataclass
class Request:
    """A validated sampling request (what __call__, sample and reference share).

    Image i (prompt-major) is prompts[rows[i]] with negative prompt negatives[neg_rows[i]] and seed seeds[i];
    __call__ fills these as seed + i and one negative prompt, `sample` takes them per image.
    """

    prompts: list[str]
    negative_prompt: str
    width: int
    height: int
    seed: int
    num_images: int
    preset: Preset
    references: object = None  # core.layout.References (editing / personalisation), or None
    rows: list[int] | None = None
    negatives: list[str] | None = None
    neg_rows: list[int] | None = None
    seeds: list[int] | None = None

    def __post_init__(self):
        n = len(self.prompts) * self.num_images
        if self.rows is None:
            self.rows = [i // self.num_images for i in range(n)]
        if self.negatives is None:
            self.negatives, self.neg_rows = [self.negative_prompt], [0] * len(self.rows)
        if self.seeds is None:
            self.seeds = [self.seed + i for i in range(len(self.rows))]

    @property
    def cfg(self) -> bool:
        return self.preset.guidance > 1.0  # the official pipeline builds the uncond sample only then

    @property
    def n_images(self) -> int:
        return len(self.rows)

    def image_seeds(self) -> list[int]:
        """Image i of the request (prompt-major) uses seed + i (or the seed `sample` was given for it)."""
        return list(self.seeds)


@dataclass(frozen=True)
class ImageSpec:
    """One image of a `Sampler.sample` batch: its prompt, negative prompt and seed (the noise of image
    `seed` is the noise __call__ gives its image i when seed = seed0 + i)."""

    prompt: str
    negative_prompt: str = " "
    seed: int = 0


def to_pil(z: torch.Tensor, height: int, width: int) -> list[Image.Image]:
    """Patch tokens in [-1, 1] -> uint8 RGB images: (z + 1)/2, x255, clipped, rounded (official order)."""
    img = unpatchify((z.detach().float().cpu() + 1) / 2, height, width)
    arr = np.round(np.clip(img.numpy().transpose(0, 2, 3, 1) * 255, 0, 255)).astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


def initial_noise(seed: int, height: int, width: int, scale: float) -> torch.Tensor:
    """[1, 3, H, W] float32: scale * N(0, 1) from a private CPU generator seeded seed + 1 (official)."""
    g = torch.Generator("cpu").manual_seed(seed + 1)
    return scale * torch.randn((1, 3, height, width), generator=g)


class Sampler:
    def __init__(
        self,
        model,
        tokenizer,
        preview_every: int = 1,
        cuda_graph: bool = False,
        cfg_batch: bool = True,
        compile: bool | str | Callable = False,
        cfg_split_pixels: int | None = None,
        compile_scope: str = "denoise",
        keep_graphs: int = 1,
    ):
        self.model = model
        # torch.compile of the per-step call fuses the ~30 elementwise / cast kernels of each layer (norms,
        # rotary, SwiGLU): 1.4x per step on an H200 at 1024 px (bench/RESULTS.md). Off by default: the first
        # request of each new shape pays the compilation (tens of seconds at full size). A string picks
        # the backend (tests use "eager" / "aot_eager" on the CPU). The prefix length (prompt tokens) is
        # marked dynamic, so prompts of any length share one graph per image size and batch; LoRAs must
        # be set through LoRA slots (core.lora.slots) to switch without recompiling.
        # compile_scope "denoise": the whole step is one graph (a full-size compile takes minutes);
        # "layers": one compiled function that every decoder layer runs (model.compile_layers), the rest of
        # the step eager: a fraction of the compile time, and a new shape recompiles only one layer's graph.
        self._compiled = None
        self.compile_failed: str | None = None  # why the compiled step was given up, if it was
        if compile_scope not in ("denoise", "layers"):
            raise ValueError(f"compile_scope must be 'denoise' or 'layers', got {compile_scope!r}")
        if compile and compile_scope == "denoise" and getattr(model, "_o1_block_offload", None) is not None:
            # a whole-step graph would trace the offload's copies and stream waits: compile the resident
            # layers only (core.offload runs the offloaded ones eagerly)
            compile_scope = "layers"
        self.compile_scope = compile_scope
        if compile:
            backend = "inductor" if compile is True else compile
            if compile_scope == "layers":
                model.compile_layers(backend)
                self._compiled = model.denoise
            else:
                # dynamic=False: no automatic dynamic shapes, so each image size gets its own static graph;
                # the prompt length and the batch are marked dynamic explicitly (see _fast).
                self._compiled = torch.compile(model.denoise, backend=backend, dynamic=False)
            # sizes x {one row, a batch} x {padded, unpadded prompts}: room for more than the default 8
            cfg = torch._dynamo.config
            limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # older torch
            setattr(cfg, limit, max(getattr(cfg, limit), 64))
        self.tokenizer = tokenizer
        self.preview_every = preview_every  # decode the x0 preview every this many steps and the last; 0: never
        # replay each request's denoise call as a CUDA graph (captured at its first step): removes the
        # per-kernel launch cost of ~2k small kernels per step; falls back to eager if capture fails
        self.cuda_graph = cuda_graph
        self.graph_failed: str | None = None
        # the last `keep_graphs` requests' graphs, replayed from the first step by a request of the same shapes
        # (core.step_graphs: a capture cost 0.03 s per 1024^2 request on an H200); each holds its step's memory
        self.kept_steps = KeptSteps(keep_graphs)
        # CFG rows in one denoise call (prompts padded to one length, so attention takes a key-padding
        # mask); False: cond and uncond as two calls, each unpadded, so SDPA can pick mask-free kernels
        self.cfg_batch = cfg_batch
        # when set, CFG is two calls for images of at least this many pixels and one batch below it
        # (at 2048^2 the two unpadded calls measured faster on an H200: 294.8 vs 315.4 ms per step)
        self.cfg_split_pixels = cfg_split_pixels
        self.denoise_calls = 0  # batched denoise calls made (one per group per step); tests count them

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def cfg_batched(self, width: int, height: int) -> bool:
        """Whether CFG runs as one padded batch (True) or as two unpadded calls at this size."""
        if self.cfg_split_pixels is not None:
            return width * height < self.cfg_split_pixels
        return self.cfg_batch

    # ------------------------------------------------------------------------------ request handling
    def _request(
        self,
        prompts,
        negative_prompt,
        width,
        height,
        steps,
        guidance,
        seed,
        preset,
        scheduler,
        shift,
        num_images,
        snap,
        references=None,
    ) -> Request:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a string or a non-empty list of strings")
        if not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if snap:
            width, height = snap_resolution(width, height)
        check_size(height, width)
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if guidance is not None and guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance!r}")
        p = get_preset(preset) if isinstance(preset, str) else preset
        if references is not None and p.name == "dev" and scheduler is None:
            p = get_preset("dev-edit")  # the official dev editing default: plain Euler, no re-noising
        p = p.with_overrides(steps=steps, guidance=guidance, scheduler=scheduler, shift=shift)
        refs = None
        if references is not None:
            if isinstance(references, Image.Image) or not isinstance(references, (list, tuple)) or not references:
                raise ValueError("references must be a non-empty list of images")
            refs = prepare_references(list(references), height, width)
        return Request(prompts, negative_prompt, width, height, seed, num_images, p, refs)

    def _layout(self, req: Request, text: str):
        if req.references is None:
            return build_t2i(self.tokenizer, text, req.height, req.width)
        return build_edit(self.tokenizer, text, req.height, req.width, req.references)

    @staticmethod
    def _with_refs(ref: torch.Tensor | None, z_in: torch.Tensor) -> torch.Tensor:
        """Target latents followed by the clean reference patches (generation tokens, never denoised)."""
        if ref is None:
            return z_in
        return torch.cat([z_in, ref[None].expand(z_in.shape[0], -1, -1)], dim=1)

    def _scheduler(self, req: Request, device):
        p = req.preset
        gens = None
        if p.scheduler == "flash":  # one noise stream per image, seeded like the official global RNG
            gens = [torch.Generator(device).manual_seed(s + 1) for s in req.image_seeds()]
        return make_scheduler(
            p.scheduler,
            steps=p.steps,
            shift=p.shift,
            timesteps=p.timesteps,
            s_noise=p.s_noise,
            noise_clip_std=p.noise_clip_std,
            generator=gens,
        )

    def _latents(self, req: Request, device, dtype) -> torch.Tensor:
        """[n_images, N, 3072] in the model's dtype (the official pipeline casts before patchifying)."""
        z = [
            initial_noise(s, req.height, req.width, req.preset.noise_scale).to(device, dtype)
            for s in req.image_seeds()
        ]
        return patchify(torch.cat(z))

    def _autocast(self, device):
        dtype = self.model.dtype  # as the official pipeline: autocast to the model's dtype, no cast cache
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False)

    # ------------------------------------------------------------------------------ the fast path
    @torch.no_grad()
    def __call__(
        self,
        prompts: str | Sequence[str],
        negative_prompt: str = " ",
        width: int = 1024,
        height: int = 1024,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        preset: str | Preset = "full",
        scheduler: str | None = None,
        shift: float | None = None,
        num_images: int = 1,
        callback: Callback | None = None,
        snap: bool = False,
        references: Sequence[Image.Image] | None = None,
        return_latents: bool = False,
    ) -> list[Image.Image] | torch.Tensor:
        """Images for every prompt (num_images each, prompt-major). steps/guidance/scheduler/shift
        override the preset; snap=True snaps the size to the official ~4 MP list; references: images
        that condition every prompt (editing / personalisation).
        return_latents=True returns the final patch tokens [n_images, N, 3072] instead of images."""
        req = self._request(
            prompts,
            negative_prompt,
            width,
            height,
            steps,
            guidance,
            seed,
            preset,
            scheduler,
            shift,
            num_images,
            snap,
            references,
        )
        return self._fast(req, callback, return_latents)

    @torch.no_grad()
    def sample(
        self,
        images: Sequence[ImageSpec],
        width: int = 1024,
        height: int = 1024,
        steps: int | None = None,
        guidance: float | None = None,
        preset: str | Preset = "full",
        scheduler: str | None = None,
        shift: float | None = None,
        callback: Callback | None = None,
        snap: bool = False,
        references: Sequence[Image.Image] | None = None,
        return_latents: bool = False,
    ) -> list[Image.Image] | torch.Tensor:
        """One batched sampling call for images that share size and settings but each have their own prompt,
        negative prompt and seed (the images of several requests, or the missing images of one). Image i
        equals what __call__ gives for its prompt with seed=images[i].seed (up to batching's float noise).
        references: images conditioning every image of the call (so only requests with the same references
        share one call); prepared and seen by the vision tower once for the whole call."""
        images = list(images)
        if not images or not all(isinstance(im, ImageSpec) for im in images):
            raise ValueError("images must be a non-empty list of ImageSpec")
        for im in images:
            if not isinstance(im.seed, int) or im.seed < 0:
                raise ValueError(f"seed must be a non-negative integer, got {im.seed!r}")
        prompts = list(dict.fromkeys(im.prompt for im in images))
        negatives = list(dict.fromkeys(im.negative_prompt for im in images))
        req = self._request(
            prompts,
            negatives[0],
            width,
            height,
            steps,
            guidance,
            images[0].seed,
            preset,
            scheduler,
            shift,
            1,
            snap,
            references,
        )
        for neg in negatives:
            if not isinstance(neg, str):
                raise ValueError(f"negative_prompt must be a string, got {type(neg).__name__}")
        req.rows = [prompts.index(im.prompt) for im in images]
        req.negatives, req.neg_rows = negatives, [negatives.index(im.negative_prompt) for im in images]
        req.seeds = [im.seed for im in images]
        return self._fast(req, callback, return_latents)

    def _fast(self, req: Request, callback, return_latents):
        model, device = self.model, self.model.device
        vision = None
        if req.references is not None:  # the vision tower runs once per request, shared by every row
            with self._autocast(device):
                vision = model.vision_features(
                    req.references.pixel_values.to(device), req.references.image_grid_thw.to(device)
                )
        # rows: every image's cond prompt, then (CFG) its negative prompt
        cond = (req.prompts, req.rows)
        uncond = (req.negatives, req.neg_rows)
        if not req.cfg:
            groups = [cond]
        elif self.cfg_batched(req.width, req.height):
            groups = [(cond[0] + uncond[0], cond[1] + [len(req.prompts) + j for j in uncond[1]])]
        else:
            groups = [cond, uncond]
        prefixes = [self._prefix(req, texts, rows, vision) for texts, rows in groups]
        if self._compiled is not None:
            for prefix in prefixes:
                mark_prefix_dynamic(prefix)

        def denoise(vinputs, t):
            out, i = [], 0
            for prefix in prefixes:  # one call per group: a single one unless CFG runs as two calls
                b = prefix.batch_size
                vin, tt = vinputs[i : i + b], t[i : i + b]
                with self._autocast(device):
                    out.append(self._step(prefix, vin, tt))
                self.denoise_calls += 1
                i += b
            return out[0] if len(out) == 1 else torch.cat(out)

        if self.cuda_graph:
            denoise = self._graphed(req, prefixes, denoise)

        ref = None if req.references is None else req.references.ref_patches.to(device, model.dtype)

        def predict(z_in, t):
            return denoise(self._with_refs(ref, z_in), t.expand(z_in.shape[0]))[:, : z_in.shape[1]]

        out = self._run(req, predict, callback, return_latents)
        if isinstance(denoise, GraphedCall):
            self.graph_failed = denoise.failed  # None when every step after the first replayed the graph
            if denoise.failed is not None:
                # a step that cannot be captured once cannot be later either: no capture attempt per request
                log.warning("CUDA graph capture failed, steps run without graphs from now on: %s", denoise.failed)
                self.cuda_graph = False
                self.kept_steps.clear()
        return out

    def _graphed(self, req: Request, prefixes: list, denoise) -> GraphedCall:
        """The request's graphed step: the kept one for its shapes, with its prefixes copied in, or a new one
        (captured at its first call) kept in place of the least recently used."""
        key = self._graph_key(req, prefixes)
        if key is None:  # not keepable: free the kept graphs' memory before this one captures
            self.kept_steps.clear()
            return GraphedCall(denoise)
        call = self.kept_steps.take(key, prefixes)
        if call is None:
            call = GraphedCall(denoise)
            self.kept_steps.keep(key, call, prefixes)
        return call

    def _graph_key(self, req: Request, prefixes: list) -> tuple | None:
        """Everything a captured step bakes in besides tensor values (core.step_graphs); None: do not keep it."""
        from core.lora import capture_state

        lora = capture_state(self.model)
        if lora is None or getattr(self.model, "_o1_block_offload", None) is not None:
            return None
        if not all(writable(p) for p in prefixes):
            return None
        refs = None if req.references is None else tuple(req.references.ref_patches.shape)
        sizes = (req.width, req.height, refs, self.model.dtype)
        return (id(self._compiled), sizes, lora, tuple(prefix_signature(p) for p in prefixes))

    def _step(self, prefix, vinputs, t):
        """One denoise call, compiled when asked. A compiled call that fails (a compiler error on a new
        shape, say) is logged and the sampler goes eager from then on: the call has no side effects, so
        the same inputs run again eagerly and the request goes on; a real error raises there again."""
        if self._compiled is None:
            return self.model.denoise(prefix, vinputs, t)
        mark_batch_dynamic(vinputs, t)
        try:
            return self._compiled(prefix, vinputs, t)
        except torch.OutOfMemoryError:
            raise  # eager would not fit either
        except Exception as e:  # noqa: BLE001 - compilation is an optimisation; eager is always correct
            self.compile_failed = f"{type(e).__name__}: {e}"[:2000]
            log.exception("compiled denoise failed; eager from now on")
            self._compiled = None
            self.kept_steps.clear()
            if self.compile_scope == "layers":
                self.model.eager_layers()
            return self.model.denoise(prefix, vinputs, t)

    def _prefix(self, req: Request, texts: list[str], rows: list[int], vision):
        """K/V prefix of `texts` (right-padded into one batch), row j being texts[rows[j]]."""
        device = self.model.device
        batch = collate([self._layout(req, t) for t in texts]).to(device)
        if vision is not None:
            emb, deep = vision
            vision = (emb.repeat(len(texts), 1), [d.repeat(len(texts), 1) for d in deep])
        with self._autocast(device):
            prefix = self.model.encode_prefix(batch, vision=vision)
        if self._compiled is not None and len(texts) > 1 and prefix.ar_lengths is None:
            # Texts that happen to have one length would make a mask-free variant of the compiled step: a
            # compile in the middle of a request. An all-true key mask keeps the graph the warm-up built.
            prefix.ar_lengths = torch.full((len(texts),), prefix.n_ar, dtype=torch.long, device=device)
        # CFG's two runs of rows (prompt, negative) attend to their own unpadded prompts: no key mask
        return prefix.select(torch.tensor(rows, device=device)).grouped()

    # ------------------------------------------------------------------------------ the oracle
    @torch.no_grad()
    def reference(
        self,
        prompts,
        negative_prompt: str = " ",
        width: int = 1024,
        height: int = 1024,
        steps=None,
        guidance=None,
        seed: int = 0,
        preset="full",
        scheduler=None,
        shift=None,
        num_images: int = 1,
        snap: bool = False,
        dense: bool = False,
        callback=None,
        references=None,
        return_latents: bool = False,
    ):
        """The official way: every step, one full forward (prompt + image) per image and per cond/uncond,
        nothing cached. dense=True uses model.reference_forward (the official dense-mask attention)."""
        req = self._request(
            prompts,
            negative_prompt,
            width,
            height,
            steps,
            guidance,
            seed,
            preset,
            scheduler,
            shift,
            num_images,
            snap,
            references,
        )
        model, device = self.model, self.model.device
        fwd = model.reference_forward if dense else model
        one = {t: collate([self._layout(req, t)]).to(device) for t in req.prompts + req.negatives}
        rows = [req.prompts[r] for r in req.rows]
        rows += [req.negatives[r] for r in req.neg_rows] if req.cfg else []

        def predict(z_in, t):
            out = []
            for text, z_row in zip(rows, z_in.split(1)):
                b = one[text]
                with self._autocast(device):
                    x = fwd(**b.model_inputs(b.vinputs(z_row.clone()), t.reshape(1))).x_pred
                out.append(x[0, b.vinput_mask[0]][: z_row.shape[1]][None])
            return torch.cat(out)

        return self._run(req, predict, callback, return_latents)

    # ------------------------------------------------------------------------------ shared
    def _run(self, req: Request, predict, callback, return_latents):
        sched = self._scheduler(req, self.model.device)
        z = self._latents(req, self.model.device, self.model.dtype)
        guidance = req.preset.guidance if req.cfg else None

        def on_step(i, total, x_pred, z):
            if callback is not None:
                done = i + 1
                # preview_every 0: no preview at all (a decode is a host sync and a CPU copy of the image)
                show = self.preview_every > 0 and (done == total or done % self.preview_every == 0)
                callback(done, total, to_pil(x_pred[:1], req.height, req.width)[0] if show else None)

        z = flow_loop(sched, z, predict, guidance, on_step)
        return z if return_latents else to_pil(z, req.height, req.width)


def mark_prefix_dynamic(prefix) -> None:
    """Mark the prompt-length dim of a prefix's tensors dynamic for torch.compile: prompts of every length
    share one compiled denoise per image size (and batch kind) instead of one compile per length. The batch
    dim is marked too when above 1: every batch of 2+ rows shares one graph, a single row keeps its own
    (fully static) one."""
    batched = prefix.batch_size > 1
    for x in prefix.kv_tensors():
        # maybe_: should a backend specialise the length after all, it recompiles per length, not fails
        torch._dynamo.maybe_mark_dynamic(x, 2)
        if x.shape[0] > 1:  # (a grouped prefix's runs of one row stay static, as a single-row batch does)
            torch._dynamo.maybe_mark_dynamic(x, 0)
    if batched:
        torch._dynamo.maybe_mark_dynamic(prefix.gen_position_ids, 1)
        if prefix.ar_lengths is not None:
            torch._dynamo.maybe_mark_dynamic(prefix.ar_lengths, 0)


def mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    """The per-step inputs' batch dim, as mark_prefix_dynamic marks the prefix's (only when above 1)."""
    for x in tensors:
        if x.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)


def flow_loop(sched, z: torch.Tensor, predict, guidance: float | None = None, on_step=None) -> torch.Tensor:
    """The official denoising loop over `sched.timesteps`; z [B, N, 3072] stays in its own dtype.

    predict(z_in, t) -> x_pred [len(z_in), N, 3072] with t the model's timestep (0-d float32, on z's device)
    and z_in = z, or [z; z] (cond rows, then uncond rows) when guidance is given (CFG).
    on_step(i, total, x_pred, z) runs after every step (z: the new state).
    """
    dtype, total = z.dtype, len(sched.timesteps)
    # the model's t for every step, moved to the device once (a per-step host copy would stall the queue)
    ts = (1.0 - sched.timesteps.float() / 1000.0).to(z.device)
    for i, step_t in enumerate(sched.timesteps):
        sigma = (step_t.float() / 1000.0).clamp_min(T_EPS)  # T/1000, not the scheduler's own sigma
        t = ts[i]
        z_in = z if guidance is None else torch.cat([z, z])
        x_pred = predict(z_in, t)
        v = (x_pred.float() - z_in.float()) / sigma
        if guidance is not None:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        z = sched.step(-v, z.float()).to(dtype)
        if on_step is not None:
            on_step(i, total, x_pred, z)
    return z
