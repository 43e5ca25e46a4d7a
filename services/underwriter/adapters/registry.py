"""Model registry on disk: <root>/<version>/{model.txt, metadata.json, model_card.md} and <root>/CHAMPION."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED_FILES = ("model.txt", "metadata.json", "model_card.md")


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ModelEntry:
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / "model.txt"


def _check_version(version: str) -> None:
    if not VERSION_RE.match(version):
        raise RegistryError(f"invalid model version name {version!r}")


def load_version(root: str | Path, version: str) -> ModelEntry:
    _check_version(version)
    path = Path(root) / version
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise RegistryError(f"model {version!r} in {root} is missing {', '.join(missing)}")
    try:
        metadata = json.loads((path / "metadata.json").read_text("utf-8"))
    except ValueError as exc:
        raise RegistryError(f"{path / 'metadata.json'} is not valid JSON: {exc}") from None
    if not isinstance(metadata.get("features"), list):
        raise RegistryError(f"{path / 'metadata.json'} has no 'features' list")
    return ModelEntry(version, path, metadata)


def champion_version(root: str | Path) -> str:
    marker = Path(root) / "CHAMPION"
    if not marker.is_file():
        raise RegistryError(f"no CHAMPION file in model registry {root}")
    return marker.read_text("utf-8").strip()


def load_champion(root: str | Path) -> ModelEntry:
    return load_version(root, champion_version(root))


def promote(root: str | Path, version: str) -> None:
    """Make `version` the champion (atomic rename of the CHAMPION file)."""
    load_version(root, version)  # refuse to promote an incomplete model
    marker = Path(root) / "CHAMPION"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(version + "\n", "utf-8")
    os.replace(tmp, marker)


def versions(root: str | Path) -> list[str]:
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and (p / "metadata.json").is_file())
