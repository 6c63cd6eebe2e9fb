"""The model registry serves only its own versions directory: a `model:serving` pointer forged by
anyone who can write Redis (a path elsewhere, a `..` escape, a symlink out) is refused; the
reasoners' and workers' lookup keeps what it serves, a rollback skips such entries."""

from __future__ import annotations

import orjson
import pytest

from contracts.keys import RedisKeys
from features.redis_client import connect
from reasoning.registry import ModelRegistry, RegistryError, served_model_dir

pytestmark = pytest.mark.integration


def _model(path):
    path.mkdir(parents=True)
    (path / "intent.json").write_text("{}")
    return path


def test_pointers_outside_the_versions_dir_are_refused(scoped, tmp_path):
    root = tmp_path / "versions"
    settings = scoped.model_copy(update={
        "trainer": scoped.trainer.model_copy(update={"versions_dir": root}),
        "intent": scoped.intent.model_copy(update={"enabled": True, "model_dir": _model(tmp_path / "sft")})})
    client = connect(settings.redis)
    registry = ModelRegistry.from_settings(settings, client)
    good = _model(root / "v0001-sft")
    registry.promote("v0001-sft", good)
    assert served_model_dir(settings, client) == good.resolve()

    outside = _model(tmp_path / "attacker")
    (root / "v0002-link").symlink_to(outside)
    for path in (outside, root / ".." / "attacker", root / "v0002-link"):
        with pytest.raises(RegistryError, match="outside the registry's versions directory"):
            registry.promote("v0002-x", path)

    k = RedisKeys(settings.key_prefix).registry("intent")
    forged = {"version": "v0099-evil", "path": str(outside), "promoted_at": 0}
    client.set(k.serving, orjson.dumps(forged))
    client.rpush(k.history, orjson.dumps(forged))
    with pytest.raises(RegistryError):
        registry.serving_dir(tmp_path / "sft")
    # The lookup the worker and the demo use does not follow it: the configured model serves.
    assert served_model_dir(settings, client) == tmp_path / "sft"

    registry.promote("v0003-grpo", _model(root / "v0003-grpo"))
    client.rpush(k.history, orjson.dumps(forged))  # a forged entry just before the current one
    client.set(k.serving, orjson.dumps({**forged, "version": "v0004-evil"}))
    back = registry.rollback()  # from the forged pointer: past the forged entry, to a real version
    assert back["version"] == "v0003-grpo"
