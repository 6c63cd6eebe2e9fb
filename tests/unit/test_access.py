"""Access control without services: the held-out draw a feedback writer cannot steer, the API key
the openai backend sends (to a real HTTP server that checks it), and the registry's refusal of
directories outside its versions directory (the Redis side: tests/integration/test_registry_guard.py)."""

from __future__ import annotations

import json
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import SecretStr

from contracts.settings import Settings
from features.catalog import CatalogItem
from reasoning.backends import OpenAIBackend
from reasoning.explanations import Facts
from training.trainer import HOLDOUT_KEY_FILE, HoldoutDraw


def _trainer_settings(**update) -> Settings:
    s = Settings()
    return s.model_copy(update={"trainer": s.trainer.model_copy(update=update)})


def test_the_held_out_draw_is_keyed_kept_and_private(tmp_path):
    users = [f"u{n}" for n in range(2000)]
    settings = _trainer_settings(holdout_share=0.2)
    first = HoldoutDraw.from_settings(settings, tmp_path)
    key_file = tmp_path / HOLDOUT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    again = HoldoutDraw.from_settings(settings, tmp_path)  # the next run: the same users held out
    chosen = {u for u in users if first.held_out(u)}
    assert chosen == {u for u in users if again.held_out(u)}
    assert 0.15 < len(chosen) / len(users) < 0.25
    other = HoldoutDraw.from_settings(settings, tmp_path / "elsewhere")  # another key, another draw
    assert chosen != {u for u in users if other.held_out(u)}
    configured = HoldoutDraw.from_settings(_trainer_settings(holdout_key=SecretStr("k")), tmp_path)
    assert configured.key == b"k"


class _Server(ThreadingHTTPServer):
    key = "sk-test"
    seen: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization")
        self.server.seen.append(auth)
        ok = auth == f"Bearer {self.server.key}"
        body = {"choices": [{"message": {"content": "Picked for your interest in skin."}}]} if ok else \
            {"error": "invalid api key"}
        raw = json.dumps(body).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


def test_the_openai_backend_sends_its_api_key():
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    facts = Facts(CatalogItem("i", "beauty.skin", "", "cream"), "skin", None, None, "evening, monday, winter")
    try:
        with_key = OpenAIBackend(url, "m", None, None, api_key="sk-test")
        assert with_key.write_explanation("interest", facts) == "Picked for your interest in skin."
        without = OpenAIBackend(url, "m", None, None)
        assert without.write_explanation("interest", facts) is None  # 401: the grounded text serves
        assert server.seen == ["Bearer sk-test", None]
    finally:
        server.shutdown()
