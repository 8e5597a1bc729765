"""LoRAs over HTTP: import in each layout, download as PEFT zip / ComfyUI file / original, delete.

.venv/bin/python -m pytest tests/api/test_api_loras.py -q
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

from api_helpers import auth, lora_safetensors, store_files, zip_bytes

from db.training import claim_training, finish_training


def upload(client, owner, filename, data, **form):
    return client.post(
        "/v1/loras", headers=auth(owner), files={"file": (filename, data, "application/octet-stream")}, data=form
    )


def test_import_comfyui_file_and_download_it_back(client, alice):
    data = lora_safetensors("comfyui", rank=8, layers=3, alpha=4.0)
    r = upload(client, alice, "style.safetensors", data, trigger="in sks style")
    assert r.status_code == 201, r.text
    lora = r.json()
    assert (lora["name"], lora["source"], lora["format"], lora["rank"], lora["alpha"]) == (
        "style",
        "imported",
        "comfyui",
        8,
        4.0,
    )
    assert lora["trigger"] == "in sks style" and lora["size_bytes"] == len(data)
    assert lora["metadata"] == {"o1lora_test": "1"}
    assert set(lora["downloads"]) == {"comfyui", "musubi", "diffsynth", "peft", "original"}
    assert client.get(f"/v1/loras/{lora['id']}/file?format=original", headers=auth(alice)).content == data
    got = client.get(f"/v1/loras/{lora['id']}/file?format=comfyui&dtype=fp32", headers=auth(alice))
    assert got.status_code == 200 and 'filename="style-comfyui.safetensors"' in got.headers["content-disposition"]
    from safetensors.numpy import load

    assert load(got.content).keys() == load(data).keys()  # already ComfyUI keys: the same names
    default = client.get(f"/v1/loras/{lora['id']}/file", headers=auth(alice))  # default: comfyui, bf16
    assert {e["dtype"] for e in header_of(default.content).values() if e["shape"]} == {"BF16"}


def header_of(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    return header


def test_import_other_layouts(client, alice):
    kohya = upload(client, alice, "k.safetensors", lora_safetensors("kohya", rank=2)).json()
    assert (kohya["format"], kohya["rank"], kohya["alpha"]) == ("comfyui", 2, 8.0)
    peft_file = upload(client, alice, "adapter_model.safetensors", lora_safetensors("peft")).json()
    assert peft_file["format"] == "peft" and set(peft_file["downloads"]) == {
        "comfyui",
        "musubi",
        "diffsynth",
        "peft",
        "original",
    }


def test_musubi_lora_converts_with_the_base_models_module_names(client, alice):
    """musubi-tuner's underscored names need the model's module list to be read back: the API reads it from
    the base model's safetensors headers, so a musubi import converts like any other."""
    import numpy as np
    from safetensors.numpy import load, save

    stem = "lora_unet_model_language_model_layers_0_self_attn_q_proj"
    data = save(
        {
            f"{stem}.lora_down.weight": np.ones((4, 384), np.float32),
            f"{stem}.lora_up.weight": np.ones((384, 4), np.float32),
            f"{stem}.alpha": np.array(2.0, np.float32),
        }
    )
    lora = upload(client, alice, "m.safetensors", data).json()
    assert lora["format"] == "musubi" and set(lora["downloads"]) >= {"comfyui", "peft", "musubi", "original"}
    comfy = load(client.get(lora["downloads"]["comfyui"] + "&dtype=fp32", headers=auth(alice)).content)
    assert sorted(comfy) == [
        f"diffusion_model.language_model.layers.0.self_attn.q_proj.{k}"
        for k in ("alpha", "lora_A.weight", "lora_B.weight")
    ]
    back = load(client.get(lora["downloads"]["musubi"] + "&dtype=fp32", headers=auth(alice)).content)
    assert back.keys() == load(data).keys() and float(back[f"{stem}.alpha"]) == 2.0


def test_import_peft_zip_and_download_as_peft_zip(client, alice):
    weights = lora_safetensors("peft", rank=4)
    cfg = {"r": 4, "lora_alpha": 2, "target_modules": ["q_proj"]}
    data = zip_bytes(
        {
            "my_lora/adapter_config.json": json.dumps(cfg).encode(),
            "my_lora/adapter_model.safetensors": weights,
            "my_lora/README.md": b"ignored",
        }
    )
    lora = upload(client, alice, "my_lora.zip", data, name="mine").json()
    assert (lora["name"], lora["format"], lora["rank"], lora["alpha"]) == ("mine", "peft", 4, 2.0)
    r = client.get(f"/v1/loras/{lora['id']}/file?format=peft", headers=auth(alice))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert zf.read("adapter_model.safetensors") == weights
        assert json.loads(zf.read("adapter_config.json")) == cfg
    # The ComfyUI copy is converted: same tensors, PEFT's lora_alpha as per-module .alpha scalars.
    assert set(lora["downloads"]) == {"peft", "comfyui", "musubi", "diffsynth", "original"}
    comfy = client.get(lora["downloads"]["comfyui"] + "&dtype=fp32", headers=auth(alice)).content
    from safetensors.numpy import load

    tensors = load(comfy)
    assert sorted(tensors) == sorted(
        f"diffusion_model.language_model.layers.{i}.self_attn.q_proj.{k}"
        for i in range(2)
        for k in ("alpha", "lora_A.weight", "lora_B.weight")
    )
    assert float(tensors["diffusion_model.language_model.layers.0.self_attn.q_proj.alpha"]) == 2.0


def test_trained_lora_downloads_in_both_formats_and_delete_removes_files(
    client, alice, dataset, Session, store, settings
):
    job = client.post(
        "/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "sks"}
    ).json()
    prefix = f"trainings/{job['id']}"
    store.put_bytes(f"{prefix}/lora/adapter_config.json", b'{"r": 16}')
    store.put_bytes(f"{prefix}/lora/adapter_model.safetensors", b"peft-bytes")
    comfy = lora_safetensors("comfyui", rank=16, alpha=16.0)
    store.put_bytes(f"{prefix}/lora.safetensors", comfy)
    with Session() as s:
        claim_training(s, job_id=job["id"], worker_id="w")
        lora_id = finish_training(
            s,
            job_id=job["id"],
            worker_id="w",
            peft_prefix=f"{prefix}/lora",
            comfyui_key=f"{prefix}/lora.safetensors",
            rank=16,
            alpha=16.0,
            size_bytes=21,
            meta={"base_model": "tiny"},
        )
    lora = client.get(f"/v1/loras/{lora_id}", headers=auth(alice)).json()
    assert (lora["source"], lora["trigger"], lora["training_job_id"], lora["name"]) == (
        "trained",
        "sks",
        job["id"],
        "sks",
    )
    assert set(lora["downloads"]) == {"peft", "comfyui", "musubi", "diffsynth"}
    got = header_of(client.get(lora["downloads"]["comfyui"] + "&dtype=fp32", headers=auth(alice)).content)
    assert {k: (e["dtype"], e["shape"]) for k, e in got.items()} == {
        k: (e["dtype"], e["shape"]) for k, e in header_of(comfy).items()
    }
    with zipfile.ZipFile(io.BytesIO(client.get(lora["downloads"]["peft"], headers=auth(alice)).content)) as zf:
        assert zf.read("adapter_model.safetensors") == b"peft-bytes"

    gen = client.post(
        "/v1/generations", headers=auth(alice), json={"prompt": "p", "loras": [{"id": lora_id}]}
    ).json()
    r = client.delete(f"/v1/loras/{lora_id}", headers=auth(alice))
    assert r.status_code == 409 and "generation" in r.json()["error"]["message"]
    from db.generations import claim_generation, fail_generation

    with Session() as s:
        claim_generation(s, job_id=gen["id"], worker_id="g")
        fail_generation(s, job_id=gen["id"], worker_id="g", error="x")
    assert client.delete(f"/v1/loras/{lora_id}", headers=auth(alice)).status_code == 204
    assert client.get(f"/v1/loras/{lora_id}", headers=auth(alice)).status_code == 404
    assert not any(f.startswith(f"{prefix}/lora") for f in store_files(settings))
    assert client.get(f"/v1/trainings/{job['id']}", headers=auth(alice)).json()["lora_id"] is None


def test_list_loras(client, alice):
    ids = [upload(client, alice, f"l{i}.safetensors", lora_safetensors()).json()["id"] for i in range(2)]
    page = client.get("/v1/loras?limit=2", headers=auth(alice)).json()
    assert [x["id"] for x in page["data"]] == ids[::-1] and page["count"] >= 2


def test_long_file_name_is_cut_to_the_name_column(client, alice):
    r = upload(client, alice, "y" * 240 + ".safetensors", lora_safetensors())
    assert r.status_code == 201 and r.json()["name"] == "y" * 200


def test_every_key_spelling_the_loader_reads_is_accepted(client, alice):
    """The upload check reads keys with the loader's own grammar (core.lora.keys): a spelling core.lora can
    place is never refused at the door (older kohya ".lora.down", diffusers ".lora_linear_layer.down")."""
    import numpy as np
    from safetensors.numpy import save

    from core.lora.keys import ROLES

    for down, up in [(s, u) for (s, r), (u, r2) in zip(ROLES[::2], ROLES[1::2]) if (r, r2) == ("down", "up")]:
        stem = "diffusion_model.language_model.layers.0.self_attn.q_proj"
        data = save({stem + down: np.zeros((4, 384), np.float32), stem + up: np.zeros((384, 4), np.float32)})
        r = upload(client, alice, "x.safetensors", data)
        assert r.status_code == 201, (down, r.text)
        assert (r.json()["format"], r.json()["rank"]) == ("comfyui", 4), down
