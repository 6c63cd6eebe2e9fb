"""The intent model registry: immutable version directories and a serving pointer in Redis.

- Versions live in `trainer.versions_dir` (default `<cache_dir>/models/versions`), one
  directory per name; a name is `v0007-grpo` (a sequence
  number from Redis, never below one already on disk, plus a label), so no name is ever reused,
  also after a rollback or a Redis flush.
- `model:serving` (Redis, under the key prefix) holds the serving entry as JSON: version, path,
  promoted_at, the held-out figures that promoted it, and `feedback_until` (the feedback log
  time the version was trained up to: the next run reads what was logged after it).
- `model:history` lists every entry ever promoted, oldest first; `rollback` points the serving
  entry back at the previous one and records the rolled-back version in `model:retired`.

The reasoner's LM child polls the pointer (`intent.registry_poll_s`) and loads a new version
between batches; without a pointer it serves `intent.model_dir`.

The pointer is data anyone with write access to Redis can change, and loading a model directory
runs its code paths on its files: the registry promotes, rolls back to and serves only
directories inside its versions directory (symlinks resolved). A pointer elsewhere raises
`RegistryError`; the reasoners and workers keep what they serve and log it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import orjson
import redis

from contracts.keys import RedisKeys
from features.redis_client import connect

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"^v(\d+)-")


class RegistryError(RuntimeError):
    pass


MARKERS = {"intent": "intent.json", "sequential": "sequential.json"}
"""The file that makes a directory a model of its kind (a promotion or rollback checks it)."""


class ModelRegistry:
    """One kind's registry (`kind`: contracts/keys.py MODEL_KINDS): the intent model's pointer
    is `model:serving`, the sequential route's `model:sequential:serving`; versions of both kinds
    share the versions directory and the name sequence, so no name is reused across kinds."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, root: Path, kind: str = "intent") -> None:
        self.client = client
        self.keys = keys
        self.root = root
        self.kind = kind
        self.k = keys.registry(kind)
        self.marker = MARKERS[kind]

    @classmethod
    def from_settings(cls, settings, client: redis.Redis | None = None, kind: str = "intent") -> "ModelRegistry":
        r = settings.redis
        client = client or connect(r)
        root = settings.trainer.versions_dir or settings.cache_dir / "models" / "versions"
        return cls(client, RedisKeys(settings.key_prefix), root.expanduser(), kind)

    def current(self) -> dict | None:
        raw = self.client.get(self.k.serving)
        return orjson.loads(raw) if raw else None

    def confined(self, path: Path | str) -> Path:
        """`path` resolved, when it lies inside the versions directory; else RegistryError.

        >>> import tempfile; root = Path(tempfile.mkdtemp())
        >>> r = ModelRegistry(None, RedisKeys(""), root)
        >>> r.confined(root / "v0001-sft") == (root / "v0001-sft").resolve()
        True
        >>> r.confined(root / ".." / "elsewhere")
        Traceback (most recent call last):
        ...
        reasoning.registry.RegistryError: refusing model directory ... outside the registry's versions directory ...
        """
        resolved = Path(path).expanduser().resolve()
        root = self.root.expanduser().resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise RegistryError(f"refusing model directory {resolved}: it is outside the registry's versions "
                                f"directory {root} (trainer.versions_dir)")
        return resolved

    def serving_dir(self, default: Path) -> Path:
        """The serving version's directory, or `default` when nothing was promoted yet; a pointer
        outside the versions directory raises RegistryError."""
        entry = self.current()
        return self.confined(entry["path"]) if entry else default

    def history(self) -> list[dict]:
        return [orjson.loads(x) for x in self.client.lrange(self.k.history, 0, -1)]

    def new_version(self, label: str) -> tuple[str, Path]:
        """A fresh version name and its (not yet existing) directory."""
        on_disk = [int(m.group(1)) for p in (self.root.glob("v*") if self.root.exists() else [])
                   if (m := _NUMBER.match(p.name))]
        floor = max(on_disk, default=0)
        n = int(self.client.incr(self.keys.model_sequence))
        if n <= floor:
            n = floor + 1
            self.client.set(self.keys.model_sequence, n)
        name = f"v{n:04d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-') or 'model'}"
        return name, self.root / name

    def promote(self, version: str, path: Path, **details) -> dict:
        path = self.confined(path)
        if not (path / self.marker).exists():
            raise RegistryError(f"cannot promote {version}: no {self.kind} model at {path}")
        entry = {"version": version, "path": str(path), "promoted_at": int(time.time() * 1000), **details}
        blob = orjson.dumps(entry)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.k.serving, blob)
        pipe.rpush(self.k.history, blob)
        pipe.execute()
        return entry

    def rollback(self) -> dict:
        """Serve the version promoted before the current one again."""
        current = self.current()
        if current is None:
            raise RegistryError("nothing is promoted: there is no version to roll back from")
        retired = {x for x in self.client.smembers(self.k.retired)}
        previous = None
        for entry in reversed(self.history()):
            if entry["version"] != current["version"] and entry["version"].encode() not in retired \
                    and self._servable(entry["path"]):
                previous = entry
                break
        if previous is None:
            raise RegistryError(f"{current['version']} is the only version left: nothing to roll back to")
        entry = {**previous, "rolled_back_from": current["version"], "promoted_at": int(time.time() * 1000)}
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.k.retired, current["version"])
        pipe.set(self.k.serving, orjson.dumps(entry))
        pipe.rpush(self.k.history, orjson.dumps(entry))
        pipe.execute()
        return entry

    def _servable(self, path: str) -> bool:
        try:
            return self.confined(path).joinpath(self.marker).exists()
        except RegistryError:
            return False


def served_model_dir(settings, client: redis.Redis | None = None) -> Path | None:
    """The intent model the reasoners serve (the registry's serving version, else
    intent.model_dir), or None when the intent route is off or no model exists there: the one
    rule the worker, the demo and the evaluation use to decide whether reasoning runs."""
    if not settings.intent.enabled:
        return None
    default_dir = settings.intent.resolved_model_dir(settings.cache_dir)
    try:
        model_dir = ModelRegistry.from_settings(settings, client).serving_dir(default_dir)
    except RegistryError:
        log.exception("the registry's serving pointer is refused; looking at %s", default_dir)
        model_dir = default_dir
    return model_dir if (model_dir / "intent.json").exists() else None


def served_sequential_dir(settings, client: redis.Redis | None = None) -> Path | None:
    """The sequential route's model the workers serve (the registry's serving sequential version,
    else sequential.model_dir), or None when the route is off or no model exists there."""
    if not settings.sequential.enabled:
        return None
    model_dir = ModelRegistry.from_settings(settings, client, kind="sequential").serving_dir(
        settings.sequential.resolved_model_dir(settings.cache_dir))
    return model_dir if (model_dir / MARKERS["sequential"]).exists() else None
