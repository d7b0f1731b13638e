"""`hub.push_to_hub` / `vlalign push`: model cards filled from the run, and the upload through
huggingface_hub's own client — tested offline against a local fake hub that stores what it receives in
a folder. WHY a fake endpoint instead of mocking the client: the real `create_repo` / `upload_folder`
code runs (preupload, NDJSON commit), so a change in how vlalign calls the client would show here.

The fake hub implements the four endpoints an upload of small files uses (POST /api/repos/create,
/api/validate-yaml for the model card's metadata, /api/models/{repo}/preupload/{rev},
/api/models/{repo}/commit/{rev}); it answers "regular" to every preupload so files arrive inline in the
commit. Any other request fails the test.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from vlalign.hub import HubConfig, HubPushError, model_card
from vlalign.trainers.configs import DPOConfig, SFTConfig


class FakeHub(BaseHTTPRequestHandler):
    root: Path
    unexpected: list[str]

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _base(self) -> str:
        return f"http://{self.headers['Host']}"  # URLs the client accepts: on the endpoint it called

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            req = json.loads(raw)
            repo = f"{req['organization']}/{req['name']}"
            (self.root / repo).mkdir(parents=True, exist_ok=True)
            return self._reply({"url": f"{self._base()}/{repo}", "name": repo, "id": repo})
        if parts == ["api", "validate-yaml"]:  # the client checks a README's metadata before uploading it
            front = json.loads(raw)["content"].split("---\n")[1]
            meta = yaml.safe_load(front)
            bad = [f"base_model {meta['base_model']!r} is no hub id"] if str(meta.get("base_model", "x")).startswith(("/", ".")) else []
            return self._reply({"errors": [{"message": m} for m in bad], "warnings": []})
        if parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(raw)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if parts[:2] == ["api", "models"] and parts[4] == "commit":
            repo = self.root / parts[2] / parts[3]
            for line in raw.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    target = repo / item["value"]["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(item["value"]["content"]))
            return self._reply({"commitUrl": f"{self._base()}/{parts[2]}/{parts[3]}/commit/{'0' * 40}", "commitOid": "0" * 40,
                                "pullRequestUrl": None})  # fmt: skip
        self.unexpected.append(f"POST {self.path}")
        self.send_error(404)

    def do_GET(self) -> None:
        self.unexpected.append(f"GET {self.path}")
        self.send_error(404)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """(endpoint URL, folder the fake hub stores repositories in, unexpected requests seen)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this is local
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    root = tmp_path / "hub"
    handler = type("Handler", (FakeHub,), {"root": root, "unexpected": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.unexpected
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return tiny_model_dir("llava")


def sft_config(model: Path, data: Path, out: Path, **extra) -> SFTConfig:
    return SFTConfig.model_validate({
        "output_dir": str(out), "model": {"name_or_path": str(model)}, "data": {"train": str(data), "max_length": 128},
        "per_device_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "progress": False, **extra,
    })  # fmt: skip


def test_push_needs_a_repository():
    with pytest.raises(ValueError, match="hub.hub_model_id is not set"):
        HubConfig(push_to_hub=True)


def test_model_card_states_base_model_data_config_and_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.9}\n{"step": 2, "loss": 0.5, "accuracy": 0.75}\n')
    cfg = DPOConfig.model_validate({"output_dir": str(tmp_path), "model": {"name_or_path": "Qwen/Qwen2-VL-2B-Instruct"},
                                    "data": {"train": str(tmp_path / "metrics.jsonl")}, "loss": "ipo", "beta": 0.5})  # fmt: skip
    card = model_card(cfg, tmp_path, {"steps": 2, "skipped_steps": 0, "saved": {}}, "adapter", "me/qwen-ipo")
    meta = card.data.to_dict()
    assert meta["base_model"] == "Qwen/Qwen2-VL-2B-Instruct" and meta["library_name"] == "peft"  # an adapter
    assert meta["tags"] == ["vlalign", "dpo", "ipo"] and "datasets" not in meta  # a local data file is no hub dataset
    text = card.text
    assert "# me/qwen-ipo" in text and '"loss": 0.5' in text and '"accuracy": 0.75' in text and '"steps": 2' in text
    assert "torch kernels" in text  # the machine it was measured on
    config_block = text.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_block)["beta"] == 0.5  # the resolved config, loadable as is


def test_push_to_hub_uploads_final_with_its_card(llava, trainer_data, tmp_path, fake_hub):
    from vlalign.trainers.sft import train_sft

    endpoint, hub_root, unexpected = fake_hub
    out = tmp_path / "run"
    train_sft(sft_config(llava, trainer_data[1], out, hub={"push_to_hub": True, "hub_model_id": "me/tiny-sft", "endpoint": endpoint}))
    repo = hub_root / "me" / "tiny-sft"
    local = sorted(p.relative_to(out / "final").as_posix() for p in (out / "final").rglob("*") if p.is_file())
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == local
    assert "README.md" in local and "model.safetensors" in local
    for name in local:  # byte for byte what the run saved
        assert (repo / name).read_bytes() == (out / "final" / name).read_bytes(), name
    card = ModelCard.load(repo / "README.md")
    assert card.data.to_dict()["library_name"] == "transformers" and "base_model" not in card.data.to_dict()  # local base
    assert f"`{llava}` (a local folder" in card.text and "me/tiny-sft" in card.text
    assert unexpected == []


def test_lora_run_pushes_merged_model_at_root_and_adapter_in_its_folder(llava, trainer_data, tmp_path, fake_hub):
    from vlalign.trainers.sft import train_sft

    endpoint, hub_root, unexpected = fake_hub
    out = tmp_path / "lora"
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": "all-linear"}
    cfg = sft_config(llava, trainer_data[1], out, hub={"push_to_hub": True, "hub_model_id": "me/tiny-lora", "endpoint": endpoint})
    cfg.model.lora = cfg.model.lora.model_validate(lora)
    train_sft(cfg)
    repo = hub_root / "me" / "tiny-lora"
    assert (repo / "model.safetensors").is_file() and (repo / "adapter" / "adapter_model.safetensors").is_file()
    assert ModelCard.load(repo / "adapter" / "README.md").data.to_dict()["library_name"] == "peft"
    assert unexpected == []


def test_a_failed_push_says_the_run_is_saved_and_how_to_retry(llava, trainer_data, tmp_path, fake_hub):
    from vlalign.cli import app
    from vlalign.trainers.sft import train_sft

    endpoint, hub_root, _ = fake_hub
    out = tmp_path / "run"
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(HubPushError, match=r"saved in .*run; push it again with `vlalign push"):
        train_sft(sft_config(llava, trainer_data[1], out, hub={"push_to_hub": True, "hub_model_id": "me/x", "endpoint": dead}))
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "README.md").is_file()
    # the retry, pointed at a hub that answers
    res = CliRunner().invoke(app, ["push", str(out), f"endpoint={endpoint}", "hub_model_id=me/retried"])
    assert res.exit_code == 0, res.output
    assert (hub_root / "me" / "retried" / "model.safetensors").read_bytes() == (out / "final" / "model.safetensors").read_bytes()
