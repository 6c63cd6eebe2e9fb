"""Prompts as files, loaded by name. The intent model is trained on exactly these texts, so a
prompt's version (a hash of its text) is recorded in the model's metadata; `load` keeps the text
byte for byte (no trailing newline is added or stripped)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:8]

    def format(self, **values: str) -> str:
        return self.text.format(**values)


@lru_cache(maxsize=None)
def load(name: str) -> Prompt:
    path = FOLDER / f"{name}.md"
    if not path.exists():
        known = sorted(p.stem for p in FOLDER.glob("*.md"))
        raise FileNotFoundError(f"no prompt {name!r} in {FOLDER} (known: {known})")
    return Prompt(name, path.read_text())


def versions(names=("system", "user", "planner", "expert", "tags")) -> dict[str, str]:
    return {n: load(n).version for n in names}
