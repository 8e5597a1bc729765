"""`o1lora`: the command-line client (train, generate, status, cancel, list, download) over O1LoraClient.

Results go to stdout, progress bars and messages to stderr. Exit codes: 0 done; 1 the service refused a
request or the job failed / was canceled; 2 bad command line or local input; 3 the service did not answer;
130 Ctrl-C detached from a job that keeps running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from client.api import COLLECTIONS, JOB_KINDS, TERMINAL, O1LoraClient
from client.errors import ApiError, ClientError, Unreachable
from client.progress import bar_for

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DETACHED = 1, 2, 3, 130

# Training flags -> TrainingCreate fields. Only flags given are sent: the service fills in its defaults.
TRAIN_FIELDS: list[tuple[str, str, Any, str]] = [
    ("--name", "name", str, "name of the job and of its LoRA (default: the trigger)"),
    (
        "--preset",
        "preset",
        str,
        "a named recipe of the service (o1lora presets lists them); flags given win; default: the service's "
        "default preset (o1lora presets marks it)",
    ),
    ("--steps", "steps", int, "optimizer steps (default: the preset's, else 2500)"),
    ("--rank", "rank", int, "LoRA rank (default: the preset's, else 16)"),
    ("--alpha", "alpha", float, "LoRA alpha (default: the preset's, else 16)"),
    ("--lr", "learning_rate", float, "learning rate (default: the preset's, else 1e-4)"),
    (
        "--resolution",
        "resolution",
        int,
        "training resolution, multiple of 32 (default: the preset's, else 1024); also checks the upload at it",
    ),
    ("--batch-size", "batch_size", int, "images per step (default: the preset's, else 1)"),
    (
        "--sample-every",
        "sample_every",
        int,
        "steps between previews, 0 = none (default: the preset's, else 500; at most --steps)",
    ),
    ("--sample-steps", "sample_steps", int, "sampler steps of a preview (default 20)"),
    ("--sample-size", "sample_size", int, "preview side in pixels (default: the resolution)"),
    ("--seed", "seed", int, "seed (default 0)"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between resume points"),
    ("--repeats", "repeats", int, "times each image is seen per epoch (default 1)"),
    ("--caption-dropout", "caption_dropout", float, "fraction of captions dropped (default 0)"),
    ("--lr-schedule", "lr_schedule", str, "constant or cosine"),
    ("--warmup-steps", "warmup_steps", int, "learning-rate warm-up steps (default 0)"),
    ("--grad-accum", "grad_accum", int, "micro-batches per step (default 1)"),
    ("--validation-fraction", "validation_fraction", float, "share of the dataset held out for validation"),
    ("--validation-dataset", "validation_dataset_id", str, "validate on this uploaded dataset instead"),
    ("--validation-every", "validation_every", int, "steps between validation losses (default 500; 0 = never)"),
    ("--publish", "publish", str, "which weights become the LoRA: last (default) or best (lowest validation)"),
    ("--early-stop-patience", "early_stop_patience", int, "stop after K validations without a new best"),
    ("--reference-dropout", "reference_dropout", float, "edit datasets: share of steps trained without refs"),
    ("--base-precision", "base_precision", str, "the frozen base: auto (the worker's GPU decides), bf16 or fp8"),
    ("--webhook-url", "webhook_url", str, "URL that receives signed job events (Standard Webhooks)"),
]
GENERATE_FIELDS: list[tuple[str, str, Any, str]] = [
    (
        "--width",
        "width",
        int,
        "pixels, multiple of 32 (default: the service's, 256 on the bundled model, else 1024)",
    ),
    ("--height", "height", int, "pixels, multiple of 32 (default: the service's, as --width)"),
    (
        "--steps",
        "steps",
        int,
        "sampling steps (default: the service's; 20 on the bundled model, else the preset's)",
    ),
    ("--seed", "seed", int, "seed of image 0; image k uses seed + k (default: random, printed)"),
    (
        "--guidance",
        "guidance",
        float,
        "CFG scale (default: the service's; 2 on the bundled model, else the preset's)",
    ),
    ("--negative", "negative_prompt", str, "negative prompt"),
    ("--preset", "preset", str, "full or dev"),
    ("--num-images", "num_images", int, "images to generate (default 1)"),
    ("--webhook-url", "webhook_url", str, "URL that receives signed job events (Standard Webhooks)"),
]
# An API field named in an error, as the flag that sets it (the service speaks in body fields).
FLAG_OF = {field: flag for flag, field, _, _ in TRAIN_FIELDS + GENERATE_FIELDS} | {
    "trigger": "--trigger",
    "sample_prompts": "--sample-prompt",
    "flip": "--flip",
    "prior_preservation": "--prior-preservation",
    "loras": "--lora",
    "prompt": "PROMPT",
    "files": "the dataset",
    "dataset_id": "--dataset",
    "reference_images": "--ref",
}


class Detached(Exception):
    """Ctrl-C while following: the command ends, the job does not."""

    def __init__(self, kind: str, job_id: str):
        self.kind, self.job_id = kind, job_id


class UsageError(ClientError):
    """The command line or a local file is wrong: nothing was sent."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- following ----------------------------------------------------------------------------------------------


def follow(client: O1LoraClient, kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """Follow a job with a progress bar to its end; Ctrl-C detaches (Detached), the job keeps running."""
    bar = bar_for(kind, job)
    try:
        final = client.wait(kind, job["id"], on_event=bar)
    except KeyboardInterrupt:
        raise Detached(kind, job["id"]) from None
    except Unreachable as e:  # lost the service, not the job: it runs on where it runs
        raise Unreachable(
            f"{e}\n  the {kind} {job['id']} was not canceled; follow it again with: "
            f"o1lora status {job['id']} --follow"
        ) from None
    finally:
        bar.close()
    refuse_unless_succeeded(kind, final)
    for warning in final.get("warnings") or []:
        say(f"warning: {warning}")
    return final


def refuse_unless_succeeded(kind: str, final: dict[str, Any]) -> None:
    """A followed job that failed or was canceled ends the command with exit 1 and says why on stderr."""
    if final["status"] != "succeeded":
        why = f": {final['error']}" if final.get("error") else ""
        raise ClientError(f"{kind} {final['id']} {final['status']}{why}")


def save_images(client: O1LoraClient, gen: dict[str, Any], output: Path) -> list[Path]:
    """Image 0 to ``output``; more images to <stem>-<k><suffix> beside it (a folder: the service's names)."""
    paths = []
    for image in gen["images"]:
        dest = output
        if not output.is_dir() and len(gen["images"]) > 1:
            dest = output.with_name(f"{output.stem}-{image['index']}{output.suffix or '.png'}")
        paths.append(client.download_image(gen["id"], image["index"], dest))
    return paths


# ---- commands -----------------------------------------------------------------------------------------------


def cmd_train(client: O1LoraClient, a: argparse.Namespace) -> int:
    if (a.source is None) == (a.dataset is None):
        raise UsageError("give a folder or .zip of images, or --dataset ID of an uploaded dataset (one of them)")
    fields = picked(a, TRAIN_FIELDS)
    if a.sample_prompt:
        fields["sample_prompts"] = a.sample_prompt
    if a.flip:
        fields["flip"] = True
    if a.prior_preservation is not None:
        fields["prior_preservation"] = a.prior_preservation
    preset = None
    if a.preset:  # checked before anything is uploaded
        presets = client.training_presets()
        if a.preset not in presets:
            raise UsageError(f"--preset {a.preset!r}: the service has {', '.join(presets)}")
        preset = presets[a.preset]
    elif a.dataset is None and "resolution" not in fields:  # the service's default preset will apply
        preset = default_preset(client.training_presets())
    dataset_id = a.dataset
    if dataset_id is None:
        source = Path(a.source)
        if not source.exists():
            raise UsageError(f"{source} does not exist")
        resolution = fields.get("resolution")
        if resolution is None and preset:  # the upload is checked at the size the preset trains at
            resolution = preset["values"].get("resolution")
        say(f"uploading {source} ...")
        ds = client.upload_dataset(source, name=a.dataset_name, resolution=resolution)
        dataset_id = ds["id"]
        say(f"dataset {dataset_id}: {ds['num_images']} images, {ds['num_captions']} captioned")
        for warning in ds["report"].get("warnings") or []:
            say(f"warning: {warning}")
    try:
        job = client.create_training(dataset_id, a.trigger, **fields)
    except KeyboardInterrupt:
        raise ClientError(
            "interrupted while the training was being submitted: it may have been queued (o1lora list trainings)"
        ) from None
    except ApiError:
        if a.dataset is None:  # the upload went through: no need to send the images again
            say(
                f"the dataset stays uploaded as {dataset_id}: after fixing the options, pass --dataset {dataset_id}"
            )
        raise
    say(f"training {job['id']} {job['status']}")
    if a.detach:
        print(job["id"])
        return 0
    job = follow(client, "training", job)
    say(f"training {job['id']} succeeded: LoRA {job['lora_id']}")
    if a.no_download:
        print(job["lora_id"])
        return 0
    path = client.download_lora(job["lora_id"], a.output, format=a.format, dtype=a.dtype)
    print(path)
    return 0


def cmd_generate(client: O1LoraClient, a: argparse.Namespace) -> int:
    fields = picked(a, GENERATE_FIELDS)
    if a.ref:
        # a path is uploaded (POST /v1/images) first; anything else is taken as the id of an uploaded image
        fields["reference_images"] = [
            client.upload_image(ref)["id"] if Path(ref).is_file() else ref for ref in a.ref
        ]
    gen = client.generate(a.prompt, loras=[parse_lora(s) for s in a.lora], **fields)
    say(f"generation {gen['id']} {gen['status']} (seed {gen['params']['seed']})")
    if a.detach:
        print(gen["id"])
        return 0
    gen = follow(client, "generation", gen)
    for path in save_images(client, gen, Path(a.output)):
        print(path)
    return 0


def cmd_status(client: O1LoraClient, a: argparse.Namespace) -> int:
    kind, body = client.find(a.id, [a.kind] if a.kind else COLLECTIONS)
    if a.follow:
        if kind not in JOB_KINDS:
            raise UsageError(f"{a.id} is a {kind}: only trainings and generations run and can be followed")
        if body["status"] not in TERMINAL:
            body = follow(client, kind, body)
        refuse_unless_succeeded(kind, body)  # also a job that ended before we looked: the same answer
    if a.json:
        print(json.dumps(body, indent=2))
    else:
        print(describe(kind, body))
    return 0 if body.get("status", "succeeded") in ("succeeded", "queued", "running") else EXIT_FAILED


def cmd_cancel(client: O1LoraClient, a: argparse.Namespace) -> int:
    kind, _ = client.find(a.id, [a.kind] if a.kind else COLLECTIONS)
    if kind not in JOB_KINDS:
        raise UsageError(f"{a.id} is a {kind}: only trainings and generations can be canceled")
    out = client.cancel(kind, a.id)
    if out["cancel_requested"] and out["status"] == "running":
        print(f"{kind} {a.id}: cancel requested; it stops at its next step")
    else:
        print(f"{kind} {a.id}: {out['status']}")
    return 0


def default_preset(presets: dict[str, Any]) -> dict[str, Any] | None:
    """The preset the service gives a training that names none (None: the recipe's defaults, or an older
    service that marks none)."""
    return next((p for p in presets.values() if p.get("default")), None)


def cmd_presets(client: O1LoraClient, a: argparse.Namespace) -> int:
    presets = client.training_presets()
    if a.json:
        print(json.dumps(presets, indent=2))
        return 0
    for name, p in presets.items():
        values = ", ".join(f"{k} {v}" for k, v in p["values"].items()) or "the service's defaults"
        mark = "  (default: a training without --preset gets it)" if p.get("default") else ""
        print(f"{name:<10} {p['label']}: {p['summary']}{mark}\n{'':<10} {values}")
    if default_preset(presets) is None:  # on stderr: stdout stays one name per unindented line
        say("no default preset: a training without --preset gets the service's defaults")
    return 0


def cmd_list(client: O1LoraClient, a: argparse.Namespace) -> int:
    kind = a.what.rstrip("s")
    if a.status and kind not in JOB_KINDS:
        raise UsageError(f"--status filters trainings and generations, not {a.what}")
    page = client.list(kind, limit=a.limit, offset=a.offset, status=a.status)
    if a.json:
        print(json.dumps(page, indent=2))
        return 0
    for item in page["data"]:
        print(describe(kind, item, one_line=True))
    shown = len(page["data"])
    say(f"{shown} of {page['count']} {a.what}" + (f" (from {a.offset})" if a.offset else ""))
    return 0


def cmd_download(client: O1LoraClient, a: argparse.Namespace) -> int:
    kind, body = client.find(a.id, ("lora", "training", "generation"))
    if kind == "generation":
        if body["status"] != "succeeded" and not body["images"]:
            raise ClientError(f"generation {a.id} is {body['status']} and has no images yet")
        paths = save_images(client, body, Path(a.output))
    else:
        lora_id = body["id"] if kind == "lora" else body["lora_id"]
        if lora_id is None:
            raise ClientError(f"training {a.id} is {body['status']}: it has no LoRA yet")
        paths = [client.download_lora(lora_id, a.output, format=a.format, dtype=a.dtype)]
    for path in paths:
        print(path)
    return 0


# ---- formatting ---------------------------------------------------------------------------------------------


def describe(kind: str, b: dict[str, Any], one_line: bool = False) -> str:
    if kind == "training":
        p = b["progress"]
        loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
        line = f"{b['id']}  training    {b['status']:<9} {p['step']}/{p['total_steps']}{loss}  {b['name']}"
        extra = [f"LoRA: {b['lora_id']}"] if b.get("lora_id") else []
        if p.get("eta_seconds") is not None and b["status"] == "running":
            extra.append(f"ETA: {p['eta_seconds']:.0f} s")
        extra += [f"preview: step {v['step']} {v['url']}" for v in b["previews"]]
    elif kind == "generation":
        p = b["progress"]
        images = f"{len(b['images'])}/{b['params'].get('num_images', 1)} images"
        line = f"{b['id']}  generation  {b['status']:<9} {images}  {b['prompt'][:60]}"
        extra = [
            f"image {i['index']}: {i['width']}x{i['height']} seed {i['seed']} {i['url']}" for i in b["images"]
        ]
        extra += [f"warning: {w}" for w in b.get("warnings") or []]
    elif kind == "lora":
        line = f"{b['id']}  lora        {b['source']:<9} rank {b['rank']}  {b['name']}" + (
            f"  (trigger: {b['trigger']})" if b.get("trigger") else ""
        )
        extra = [f"formats: {', '.join(b['downloads'])}"]
    else:
        line = f"{b['id']}  dataset     {b['num_images']} images  {b['name']}"
        extra = [f"warning: {w}" for w in (b.get("report") or {}).get("warnings") or []]
    if b.get("error"):
        extra.insert(0, f"error: {b['error']}")
    return line if one_line else "\n".join([line] + [f"  {e}" for e in extra])


def explain(e: ApiError) -> str:
    lines = [f"error: {e.message} (HTTP {e.status} {e.code})"]
    if e.field:
        flag = FLAG_OF.get(e.field.split(".")[0].split("[")[0])
        lines.append(f"  field: {e.field}" + (f" (set by {flag})" if flag else ""))
    for d in e.details[1:]:  # the first is the message already
        lines.append(f"  also: {d.get('field')}: {d.get('message')}")
    if e.retry_after:
        lines.append(f"  retry after {e.retry_after} s")
    if e.status == 401:
        lines.append("  check --api-key / O1LORA_API_KEY")
    return "\n".join(lines)


# ---- argument parsing ---------------------------------------------------------------------------------------


def picked(a: argparse.Namespace, table) -> dict[str, Any]:
    return {field: getattr(a, field) for _, field, _, _ in table if getattr(a, field) is not None}


def parse_lora(spec: str) -> tuple[str, float]:
    lora_id, sep, scale = spec.partition(":")
    if not lora_id:
        raise UsageError(f"--lora {spec!r}: expected ID or ID:SCALE")
    try:
        return lora_id, float(scale) if sep else 1.0
    except ValueError:
        raise UsageError(f"--lora {spec!r}: the scale after ':' must be a number") from None


def add_fields(p: argparse.ArgumentParser, table) -> None:
    for flag, field, type_, help_ in table:
        p.add_argument(flag, dest=field, type=type_, default=None, help=help_)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o1lora",
        description="Train LoRAs and generate images on an o1lora service.",
        epilog="Ctrl-C while a job is followed detaches: the job keeps running (o1lora status ID --follow to "
        "watch it again, o1lora cancel ID to stop it).",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("O1LORA_URL"),
        help="service URL (default: $O1LORA_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("O1LORA_API_KEY"), help="API key (default: $O1LORA_API_KEY)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="upload a dataset, train a LoRA with a progress bar, download it")
    p.add_argument("source", nargs="?", help="folder of images (+ .txt captions / metadata.jsonl), or a .zip")
    p.add_argument("--dataset", help="train on an uploaded dataset instead of SOURCE")
    p.add_argument("--dataset-name", help="name of the uploaded dataset (default: the folder's)")
    p.add_argument("--trigger", required=True, help="trigger phrase, put in front of every caption")
    p.add_argument("--sample-prompt", action="append", default=[], help="preview prompt (repeatable, up to 8)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument(
        "--prior-preservation",
        action=argparse.BooleanOptionalAction,
        help="with no reg/ images in the dataset, the base model first draws each caption without the trigger and "
        "those images train as reg/ images (default: the preset's; on in 'bundled')",
    )
    add_fields(p, TRAIN_FIELDS)
    add_download_flags(p)
    p.add_argument("--no-download", action="store_true", help="print the LoRA id instead of downloading it")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("generate", help="generate images, with a progress bar")
    p.add_argument("prompt")
    p.add_argument("--lora", action="append", default=[], metavar="ID[:SCALE]", help="LoRA to apply (repeatable)")
    p.add_argument(
        "-o",
        "--output",
        default="out.png",
        help="image path (more images: <stem>-<k>.png) or a folder (default out.png)",
    )
    p.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="IMAGE",
        help="reference image (editing / personalisation): a file to upload or an image id (repeatable, up to 10)",
    )
    p.add_argument("--detach", action="store_true", help="print the generation id and return at once")
    add_fields(p, GENERATE_FIELDS)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("status", help="show a training, generation, LoRA or dataset")
    p.add_argument("id")
    p.add_argument("--kind", choices=list(COLLECTIONS), help="what the id is (default: looked up)")
    p.add_argument("--follow", action="store_true", help="follow a running job with a progress bar to its end")
    p.add_argument("--json", action="store_true", help="print the service's JSON")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("cancel", help="cancel a training or generation")
    p.add_argument("id")
    p.add_argument("--kind", choices=list(JOB_KINDS), help="what the id is (default: looked up)")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("presets", help="the service's training presets (for train --preset)")
    p.add_argument("--json", action="store_true", help="print the service's JSON")
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("list", help="list your trainings, generations, LoRAs or datasets")
    p.add_argument(
        "what", nargs="?", default="trainings", choices=["trainings", "generations", "loras", "datasets"]
    )
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "canceled"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the service's JSON")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("download", help="download a LoRA (by LoRA or training id) or a generation's images")
    p.add_argument("id")
    add_download_flags(p)
    p.set_defaults(run=cmd_download)
    return parser


def add_download_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["comfyui", "musubi", "diffsynth", "peft", "original"],
        help="LoRA file format (default: comfyui when available)",
    )
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="weights of a single-file format (default bf16)")
    p.add_argument("-o", "--output", default=".", help="file path or folder (default: here, the service's name)")


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not a.api_key:
        say(
            "o1lora: error: no API key: pass --api-key or set O1LORA_API_KEY (`make serve` prints one and keeps "
            "it in data/api_key)"
        )
        return EXIT_USAGE
    try:
        with O1LoraClient(a.url, a.api_key) as client:
            return a.run(client, a)
    except Detached as d:
        say(
            f"\ndetached from {d.kind} {d.job_id}: it keeps running on the service (Ctrl-C does not cancel it).\n"
            f"  follow it again: o1lora status {d.job_id} --follow\n"
            f"  cancel it:       o1lora cancel {d.job_id}"
            + (
                f"\n  its LoRA, once done: o1lora download {d.job_id}"
                if d.kind == "training"
                else f"\n  its images, once done: o1lora download {d.job_id} -o out.png"
            )
        )
        return EXIT_DETACHED
    except KeyboardInterrupt:
        say("\ninterrupted")
        return EXIT_DETACHED
    except UsageError as e:
        say(f"o1lora: error: {e}")
        return EXIT_USAGE
    except ApiError as e:
        say(explain(e))
        return EXIT_FAILED
    except Unreachable as e:
        say(f"error: {e}")
        return EXIT_UNREACHABLE
    except ClientError as e:
        say(f"error: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
