"""Find and load taggers: a local file, a Flair/Hugging Face hub name, or the packaged default."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from annotator.corpus import sha256_file
from annotator.errors import AnnotatorError, MissingModel, ModelError, UsageError
from annotator.logs import flair_imported, flair_quieted

log = logging.getLogger("annotator")

DATA_DIR = Path(__file__).parent / "data"
# an export (`annotator.tagging.export`): safetensors weights, its description in the header
DEFAULT_MODEL = DATA_DIR / "default-model.safetensors"
DEFAULT_MODEL_CARD = DATA_DIR / "MODEL_CARD.md"
DEFAULT_METRICS = DATA_DIR / "default-model.metrics.json"  # its training run (`plot default`)
DEFAULT_NAME = "default"  # `--model default` names the packaged model wherever a model is taken


@dataclass(frozen=True)
class ModelInfo:
    """Provenance written beside every output: which model, exactly."""

    name: str
    sha256: str | None


MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def looks_like_path(model: str) -> bool:
    """A path, not a hub name: it starts with / . ~, has a model suffix, has more than one
    separator or a backslash, or its parent folder exists (`runs/smal` beside `runs/`). Hub
    names are `name` or `org/name`."""
    if model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1:
        return True
    if Path(model).suffix.lower() in MODEL_SUFFIXES:
        return True
    return "/" in model and Path(model).expanduser().parent.is_dir()


def resolve_model(model: str | Path | None) -> str | Path:
    """None or `default` means the packaged default; an existing path is a file or a run
    folder; a missing one that looks like a path fails at once (no hub lookup); anything else
    is a hub name."""
    if model is None or str(model) == DEFAULT_NAME:
        if not DEFAULT_MODEL.exists():
            raise ModelError(
                "no --model given and no default model is packaged; "
                "train one with `annotator train` and pass --model PATH"
            )
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        for name in ("best-model.pt", "final-model.pt"):
            if (path / name).exists():
                return path / name
        raise ModelError(f"{path}: a folder without best-model.pt or final-model.pt")
    if path.exists():
        return path
    if isinstance(model, Path) or looks_like_path(str(model)):
        raise MissingModel(
            f"{model}: no such model file or folder (give a path that exists, `default` for "
            "the packaged model, or a hub name)"
        )
    return str(model)


def model_info(model: str | Path | None) -> ModelInfo:
    resolved = resolve_model(model)
    if isinstance(resolved, Path):
        return ModelInfo(
            name=str(model) if model is not None else DEFAULT_NAME, sha256=file_sha256(resolved)
        )
    return ModelInfo(name=resolved, sha256=None)


def file_sha256(path: Path) -> str:
    """A model file's sha256, computed once per process for its size and modification time."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


#: set to 1, the one-line notice that a Flair .pt file runs code when loaded is not printed
TRUST_ENV = "ANNOTATOR_TRUST_MODELS"
EXPORT_SUFFIX = ".safetensors"


def is_export(path: Path) -> bool:
    return path.suffix.lower() == EXPORT_SUFFIX


def cached_export(path: Path) -> Path:
    """Where the export of the Flair file `path` is cached: beside it (`x.pt.safetensors`)."""
    return path.with_name(path.name + EXPORT_SUFFIX)


def _user_cache(sha256: str) -> Path:
    """The export cache for models in folders this user cannot write to."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "annotator" / "exports" / f"{sha256}{EXPORT_SUFFIX}"


def valid_export(path: Path, sha256: str) -> Path | None:
    """The cached export of `path` made from its current content (its sha256), if one exists."""
    from annotator.tagging.export_header import read_description

    for candidate in (cached_export(path), _user_cache(sha256)):
        try:
            description = read_description(candidate) if candidate.is_file() else None
        except Exception:  # a damaged or foreign file there: rebuilt, never trusted
            description = None
        if description and description.get("source_sha256") == sha256:
            return candidate
    return None


def export_model(path: Path) -> Path | None:
    """The export of Flair file `path`, built and cached the first time it is used (and
    rebuilt when its sha256 changes); None where it holds what an export cannot (it then stays
    a `.pt`, loaded by Flair)."""
    from annotator.tagging.export import ExportError, write_export

    sha256 = file_sha256(path)
    found = valid_export(path, sha256)
    if found is not None:
        return found
    pickle_notice(path)
    flair_imported()
    for target in (cached_export(path), _user_cache(sha256)):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with flair_quieted():
                return write_export(path, target, sha256)
        except ExportError as exc:
            log.info("%s: no export (%s); Flair loads it", path, exc)
            return None
        except OSError as exc:  # a read-only folder: the user's cache, else no cache
            log.debug("cannot cache the export at %s: %s", target, exc)
        except Exception as exc:  # an unpickling failure: said by Flair's load, which follows
            log.debug("cannot export %s: %s", path, exc)
            return None
    return None


_noticed: set[Path] = set()


def pickle_notice(path: Path) -> None:
    """One line, once per file and process, before a Flair `.pt` from outside the package is
    unpickled: a pickle runs code, so a model file is code. Not for the package's own files,
    nor with ANNOTATOR_TRUST_MODELS=1."""
    path = path.resolve()
    if os.environ.get(TRUST_ENV) == "1" or path in _noticed or DATA_DIR.resolve() in path.parents:
        return
    _noticed.add(path)
    from annotator.logs import printable

    log.warning(
        "note: %s is a Flair .pt file, a pickle that runs code when loaded: use only model "
        "files you trust (%s=1 hides this note)",
        printable(str(path)),
        TRUST_ENV,
    )


def model_card(model: str | Path | None) -> dict | None:
    """The model card, read from an export's header without loading the model (None where
    the model has no export yet)."""
    from annotator.tagging.export_header import read_description

    try:
        resolved = resolve_model(model)
        if not isinstance(resolved, Path):
            return None
        export = resolved if is_export(resolved) else valid_export(resolved, file_sha256(resolved))
        description = read_description(export) if export is not None else None
    except Exception:  # the load that follows says what is wrong with the model
        return None
    return (description or {}).get("model", {}).get("model_card")


def model_export(resolved: str | Path) -> Path | None:
    """The export to load a resolved model from (None: a hub name, or a file Flair loads)."""
    if not isinstance(resolved, Path):
        return None
    if is_export(resolved):
        return resolved
    return export_model(resolved)


def load_model(
    model: str | Path | None = None,
    device: str = "auto",
    engine: str = "auto",
    precision: str = "fp32",
):
    """The model for `annotate`: from its export where an engine covers it (no `import
    flair`, no unpickling) -- the numpy engine's NumpyTagger where
    `numpy_engine_wanted` (no `import torch` either), else a
    FlatTagger -- else Flair's SequenceTagger (`load_tagger`)."""
    if engine != "flair":
        resolved = resolve_model(model)
        export = model_export(resolved)
        if numpy_engine_wanted(engine, device, precision):
            if export is not None:
                from annotator.tagging.export_header import ExportError
                from annotator.tagging.numpy_engine import numpy_tagger

                try:
                    return numpy_tagger(export)
                except ExportError as exc:
                    if engine == "numpy":
                        raise ModelError(
                            f"the numpy engine does not run {resolved}: {exc}"
                        ) from None
                    log.info("the numpy engine does not cover %s (%s)", resolved, exc)
                except Exception as exc:
                    raise ModelError(f"cannot load file {resolved}: {exc}") from None
            elif engine == "numpy":
                raise ModelError(f"the numpy engine runs exported models only, not {resolved}")
        if export is not None:
            from annotator.tagging.export import ExportError, flat_tagger

            try:
                return flat_tagger(export).to(choose_device(device))
            except ExportError as exc:
                log.info("the fast engine does not cover %s (%s)", resolved, exc)
            except Exception as exc:
                raise ModelError(f"cannot load file {resolved}: {exc}") from None
    return load_tagger(model, device)


def load_tagger(model: str | Path | None = None, device: str = "auto"):
    """Load a Flair SequenceTagger onto `device` (from an export, or by unpickling a `.pt`);
    every failure is one ModelError naming the model."""
    import flair
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings with Flair's loader)

    flair_imported()
    resolved = resolve_model(model)
    flair.device = choose_device(device)
    try:
        with flair_quieted():
            export = model_export(resolved)
            if export is not None:
                from annotator.tagging.export import flair_tagger, read_export

                tagger = flair_tagger(*read_export(export))
            else:
                if isinstance(resolved, Path):
                    pickle_notice(resolved)
                tagger = SequenceTagger.load(resolved)
    except Exception as exc:  # unpickling, hub and torch errors all mean "cannot use this model"
        where = "file" if isinstance(resolved, Path) else "hub model"
        hint = (
            ""
            if isinstance(resolved, Path)
            else " (hub models need network access; pass a local file with --model PATH)"
        )
        raise ModelError(
            f"cannot load {where} {resolved}: {type(exc).__name__}: {exc}{hint}"
        ) from None
    if not isinstance(tagger, SequenceTagger):
        raise ModelError(f"{resolved}: is a {type(tagger).__name__}, not a sequence tagger")
    tagger.eval()
    return tagger


def describe_environment() -> str:
    """What `annotator info` prints: versions, device, and the default model's card."""
    import flair
    import pyarrow
    import spacy
    import torch

    from annotator.version import __version__

    device = choose_device("auto")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    lines = [
        f"annotator {__version__}",
        f"flair     {flair.__version__}",
        f"torch     {torch.__version__}",
        f"spacy     {spacy.__version__}",
        f"pyarrow   {pyarrow.__version__}",
        f"device    {device}{gpu}",
        "",
    ]
    if DEFAULT_MODEL.exists():
        size = DEFAULT_MODEL.stat().st_size / 1e6
        lines.append(
            f"default model: {DEFAULT_MODEL} ({size:.1f} MB, "
            f"sha256 {sha256_file(DEFAULT_MODEL)[:12]})"
        )
        if DEFAULT_MODEL_CARD.exists():
            lines += ["", DEFAULT_MODEL_CARD.read_text(encoding="utf-8").rstrip()]
    else:
        lines.append("default model: none packaged (pass --model)")
    return "\n".join(lines)


def gpu_possible() -> bool:
    """Whether `--device auto` could find a GPU, told without importing torch (most of a short
    job's start): torch built for CUDA or ROCm (its library files), and a GPU driver's device
    file present."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not (any(folder.glob("libtorch_cuda*")) or any(folder.glob("libtorch_hip*"))):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()


def cpu_only(device: str) -> bool:
    """Whether `device` means the CPU, known without importing torch: `cpu`, or `auto` where
    no GPU is possible (where one is, `auto` asks torch, which then loads)."""
    if device == "cpu":
        return True
    return device == "auto" and not gpu_possible()


def choose_device(name: str = "auto"):
    """`auto` is the first GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AnnotatorError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnnotatorError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def numpy_engine_wanted(engine: str, device: str, precision: str) -> bool:
    """Whether to try the numpy engine (it then runs where it covers the model): when asked
    for (`--engine numpy`), or with `--engine auto` in float32 on a CPU known without asking
    torch (`cpu_only`). Measured about as fast as the torch fast engine on
    the default model (`annotator bench`), and a short job's start spares `import torch`."""
    if engine == "numpy":
        if device not in ("auto", "cpu"):
            raise UsageError(f"--engine numpy runs on the CPU, not --device {device}")
        return True
    return engine == "auto" and precision != "bf16" and cpu_only(device)
