"""`barcodemae export / card / push`: encoder-only folder with a model card, and an upload to a local stand-in
for the Hub (the endpoints `create_repo` and `upload_folder` use, files small enough to go inline)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from cli_helpers import export_tiny_encoder, files_in, run, tiny_pretraining_model
from safetensors import safe_open

RESULTS = {
    "barcodemae-tiny": {
        "species_linear_probe_accuracy": 91.25,
        "genus_1nn_unseen_accuracy": 70.5,
        "genus_1nn_unseen_accuracy_interval": [65.25, 75.5],
        "species_finetune_accuracy": 96.0,
        "species_finetune_accuracy_interval": [95.5, 96.5],
        "harmonic_mean": 79.5,
    },
    "other": {"species_linear_probe_accuracy": 10.0},
}


def _metadata(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---")[1])


def test_export_from_run_folder_writes_encoder_and_card(tmp_path, capsys):
    model, tokenizer = tiny_pretraining_model()
    run_dir = tmp_path / "run"
    for step in (2, 10):  # the highest checkpoint is exported
        model.save_pretrained(run_dir / f"checkpoint-{step}")
        tokenizer.save_pretrained(run_dir / f"checkpoint-{step}")
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    out = tmp_path / "barcodemae-tiny"
    code, _, err = run(capsys, "export", run_dir, out, "--results", results)
    assert code == 0, err
    assert "loads as BarcodeMAEModel + BarcodeMAETokenizer" in err
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert not any(key.startswith(("decoder", "lm_head")) for key in weights.keys())  # noqa: SIM118
    readme = (out / "README.md").read_text()
    assert "step 10" in readme and "arXiv:2502.18405" in readme and "trust_remote_code=True" in readme
    assert "non-overlapping 4-mers" in readme and 'pipeline("feature-extraction"' in readme
    metadata = _metadata(out / "README.md")
    assert metadata["pipeline_tag"] == "feature-extraction" and metadata["library_name"] == "transformers"
    entries = {m["name"]: m for result in metadata["model-index"][0]["results"] for m in result["metrics"]}
    metrics = {name: entry["value"] for name, entry in entries.items()}
    assert metrics["Species linear probe accuracy (seen species, test)"] == 91.25
    assert metrics["Species accuracy of the fine-tuned classifier (seen species, test)"] == 96.0
    genus = entries["Genus 1-NN accuracy (unseen species, test_unseen)"]
    assert genus["value"] == 70.5 and genus["args"] == {"bootstrap_interval_95": [65.25, 75.5]}
    assert "args" not in entries["Harmonic mean of probe and genus 1-NN accuracy"]  # no interval: none invented
    assert "| Genus 1-NN accuracy (unseen species, test_unseen) | 70.50 | [65.25, 75.50] |" in readme
    assert len(metadata["model-index"][0]["results"]) + len(metrics) >= 3

    code, _, err = run(capsys, "export", run_dir, out)  # an existing folder is not replaced without --overwrite
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "card", out, "--results", results, "--results-key", "other", "--model-name", "x")
    assert code == 0, err
    assert "# x" in (out / "README.md").read_text()
    assert not [name for name in files_in(tmp_path) if name.endswith(".tmp")]


def test_export_of_an_encoder_folder_keeps_its_weights_and_adds_a_card(tmp_path, capsys):
    encoder = export_tiny_encoder(tmp_path / "encoder")  # e.g. train.py's OUTPUT_DIR/encoder
    results = write_results(tmp_path)
    card = ["--results", results, "--results-key", "other"]
    code, _, err = run(capsys, "export", encoder, tmp_path / "out", *card, "--embedding-frames", "3")
    assert code == 0, err
    assert json.loads((tmp_path / "out/config.json").read_text())["embedding_frames"] == 3
    code, _, err = run(capsys, "export", encoder, tmp_path / "bad", "--embedding-frames", "5")  # k = 4
    assert code == 2 and "embedding_frames must be in 1..k_mer=4" in err
    code, _, err = run(capsys, "export", encoder, tmp_path / "zero", "--embedding-frames", "0")
    assert code == 2 and "embedding_frames must be in 1..k_mer=4" in err
    code, _, err = run(capsys, "export", encoder, tmp_path / "bag", "--readout", "kmer_bag")
    assert code == 0, err
    exported = json.loads((tmp_path / "bag/config.json").read_text())
    assert (exported["readout"], exported["embedding_frames"]) == ("kmer_bag", 1)
    assert "every overlapping k-mer" in (tmp_path / "bag/README.md").read_text()
    code, _, err = run(capsys, "export", encoder, tmp_path / "bad-readout", "--readout", "cls")
    assert code == 2 and "readout must be one of" in err
    with (
        safe_open(encoder / "model.safetensors", "pt") as before,
        safe_open(tmp_path / "out/model.safetensors", "pt") as after,
    ):
        assert sorted(before.keys()) == sorted(after.keys())
        assert all(before.get_tensor(key).equal(after.get_tensor(key)) for key in before.keys())  # noqa: SIM118
    assert "trust_remote_code=True" in (tmp_path / "out/README.md").read_text()


def test_export_refuses_a_folder_of_another_architecture(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "bert")
    code, _, err = run(capsys, "export", tmp_path / "bert", tmp_path / "out")
    assert code == 2 and "not a BarcodeMAEForPreTraining checkpoint" in err and "BertModel" in err
    assert files_in(tmp_path) == ["bert"]


def write_results(folder: Path) -> Path:
    path = folder / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


class FakeHub(BaseHTTPRequestHandler):
    """Answers repo creation, README validation, preupload (everything 'regular') and the NDJSON commit."""

    repos: dict[str, dict[str, bytes]] = {}

    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            self.repos.setdefault(repo_id, {})
            return self._reply({"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._reply({})
        parts = path.split("/")  # /api/models/{org}/{name}/{preupload|commit}/{revision}
        repo_id, action = f"{parts[3]}/{parts[4]}", parts[5]
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if action == "commit":
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.repos[repo_id][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            url = f"http://{self.headers['Host']}/{repo_id}/commit/{'a' * 40}"
            return self._reply({"commitUrl": url, "commitOid": "a" * 40})
        return self._reply({"error": "unknown endpoint"}, status=404)


@pytest.fixture
def fake_hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHub.repos = {}
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_dry_run_and_upload(tmp_path, capsys, fake_hub):
    folder = export_tiny_encoder(tmp_path / "encoder")
    code, _, err = run(capsys, "card", folder)
    assert code == 0, err
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    expected = sorted(p.name for p in folder.iterdir() if p.is_file())

    code, out, err = run(capsys, "push", folder, "user/tiny", "--dry-run", "--endpoint", fake_hub)
    assert code == 0, err
    listed = [line.split()[1] for line in out.splitlines()[:-1]]
    assert listed == expected and "loads as BarcodeMAEModel + BarcodeMAETokenizer" in out
    assert f"{(folder / 'config.json').stat().st_size}  config.json" in out
    assert FakeHub.repos == {}  # nothing was sent

    code, out, err = run(capsys, "push", folder, "user/tiny", "--endpoint", fake_hub, "--token", "hf_test")
    assert code == 0, err
    assert sorted(FakeHub.repos["user/tiny"]) == expected
    for name in expected:
        assert FakeHub.repos["user/tiny"][name] == (folder / name).read_bytes()


def test_push_refuses_a_folder_that_does_not_load(tmp_path, capsys, fake_hub):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    code, _, err = run(capsys, "push", folder, "user/tiny", "--endpoint", fake_hub)
    assert code == 2 and "missing model.safetensors, tokenizer_config.json" in err
    assert FakeHub.repos == {}


def test_load_results_reads_an_evaluate_results_json(tmp_path):
    from barcodemae.hub import load_results

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"protocol": "…", "counts": {"x": 1}, "results": RESULTS}))
    assert load_results(path, "barcodemae-tiny")["genus_1nn_unseen_accuracy"] == 70.5
