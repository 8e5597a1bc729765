"""O1LoraClient.follow against the running service: a stream cut mid-job is reopened and followed to the
job's final state; cancel through the command; a followed job that ends canceled fails the command."""

from __future__ import annotations

from test_cli_service import TRAIN

from client import O1LoraClient


def test_follow_reconnects_after_the_connection_drops(cli, dropping_proxy, photos, tmp_path):
    with O1LoraClient(f"http://127.0.0.1:{dropping_proxy.port}", cli.key) as client:
        ds = client.upload_dataset(photos, name="drops", resolution=64)
        job = client.create_training(ds["id"], "sks", steps=40, rank=4, alpha=4, resolution=64, sample_every=0)
        events, dropped_at = [], None
        for event in client.follow("training", job["id"], retry_s=0.2):
            events.append(event)
            if dropped_at is None and event.name == "progress" and event.data["step"] >= 2:
                dropped_at, connections = len(events), dropping_proxy.accepted
                dropping_proxy.drop_all()
    assert dropped_at is not None, [e.name for e in events]
    assert dropping_proxy.accepted > connections  # it connected again
    after = events[dropped_at:]
    assert after[0].name == "snapshot"  # the reopened stream starts from the DB state
    assert after[-1].name == "snapshot" and after[-1].data["status"] == "succeeded"
    assert after[-1].data["progress"]["step"] == 40


def test_cancel_command_and_a_followed_job_that_ends_canceled(cli, photos, tmp_path):
    out = cli.run("train", str(photos), *TRAIN, "--steps", "3000", "--sample-every", "0", "--detach", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    cancel = cli.run("cancel", job_id, cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    assert f"training {job_id}: " in cancel.stdout
    assert "canceled" in cancel.stdout or "cancel requested" in cancel.stdout
    follow = cli.run("status", job_id, "--follow", cwd=tmp_path)
    assert follow.returncode == 1 and f"training {job_id} canceled" in follow.stderr
