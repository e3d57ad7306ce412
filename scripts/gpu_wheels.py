"""The wheels a lent GPU machine lacks, for `make gpu-wheels` and `make gpu-carry`.

The device image (Python 3.12, torch 2.11 + CUDA 13, transformers 5.x; the package list in
/work/.library/device/KINDS.md, copied below) has neither flair nor spaCy, and nothing can be
fetched there: what `scripts/gpu-check.sh` needs travels in the working tree as wheels in
`.whl/` (installed there with `pip install --no-index --no-deps --target`) and the CoNLL++
corpus in `.gpu-data/`, all under the 64 MiB the device tool carries, the repository included.
Three things keep it under:

* compiled wheels are re-packed with their shared objects stripped (`strip --strip-unneeded`:
  spaCy's wheel goes from 35 MB to 7 MB), and transformers' TensorFlow and Flax model code
  (`modeling_tf_*.py`, `modeling_flax_*.py`: the device has neither framework, and transformers
  imports them only when one is installed) is left out (12.0 MB to 10.6 MB);
* what flair (or annotator) imports only for features the check never uses -- S3 and Google
  Drive downloads, language detection, legacy embedding files, tree printing, HTML plots,
  Wikipedia look-ups, .zst inputs -- travels as stub modules in one wheel
  (`annotator_gpu_stubs`) that raise a clear error if used;
* flair 0.15.1 pins `transformers<5` and does fail to import with 5.x (LayoutLMv2FeatureExtractor
  is gone), so transformers 4.57.6 travels, with the tokenizers and huggingface-hub it accepts.

A real run downloads (`pip download --no-deps` for CPython 3.12 on manylinux x86-64), slims,
checks that every requirement of every carried wheel is carried, stubbed or on the device, and
checks the budget. `--dry-run` checks the budget offline from the sizes recorded below.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".whl"  # carried: `.whl` in the run tool's carry list (git-ignored)
DATA_DIR = ROOT / ".gpu-data"  # carried: `.gpu-data` (git-ignored)
CORPUS_ARCHIVE = DATA_DIR / "conllpp.tar.xz"
DOWNLOADS = ROOT / "build" / "gpu-wheels"  # pip's downloads, before slimming (git-ignored)
BUDGET_MIB = 64  # the device tool's limit on the working tree that travels, carried paths included
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# the device's interpreter, for evaluating requirement markers
DEVICE_ENVIRONMENT = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    size: int  # bytes as carried (after stripping), as the last real run made it


# Everything that travels, pinned. flair and spaCy at the versions of the development
# environment; the rest is their import closure minus the device's packages.
WHEELS = (
    Wheel("flair", "0.15.1", 1_174_604),
    Wheel("spacy", "3.8.18", 6_635_810),
    Wheel("spacy-legacy", "3.0.12", 29_971),
    Wheel("spacy-loggers", "1.0.5", 22_343),
    Wheel("thinc", "8.3.14", 892_922),
    Wheel("blis", "1.3.4", 12_904_727),
    Wheel("cymem", "2.0.16", 50_552),
    Wheel("preshed", "3.0.15", 157_563),
    Wheel("murmurhash", "1.0.16", 28_561),
    Wheel("srsly", "2.5.6", 680_883),
    Wheel("wasabi", "1.1.3", 27_880),
    Wheel("catalogue", "2.0.10", 17_325),
    Wheel("confection", "1.3.4", 35_961),
    Wheel("weasel", "1.0.1", 51_002),
    Wheel("cloudpathlib", "0.26.0", 66_408),
    Wheel("smart-open", "9.0.4", 76_143),
    Wheel("pydantic", "2.14.4", 494_865),
    Wheel("pydantic-core", "2.50.5", 2_188_415),
    Wheel("annotated-types", "0.8.0", 13_427),
    Wheel("typing-inspection", "0.4.5", 14_874),
    Wheel(
        "typing-extensions", "4.16.0", 45_571
    ),  # pydantic needs >= 4.16; the device's is not known
    Wheel("transformers", "4.57.6", 10_645_341),
    Wheel("tokenizers", "0.22.2", 2_728_452),
    Wheel("huggingface-hub", "0.36.2", 566_395),
    Wheel("transformer-smaller-training-vocab", "0.4.2", 14_073),
    Wheel("conllu", "4.5.3", 16_098),
    Wheel("deprecated", "1.3.1", 11_298),
    Wheel("ftfy", "6.3.1", 44_821),
    Wheel("wcwidth", "0.2.14", 37_286),  # pure Python (0.9's compiled wheel is 0.6 MB more)
    Wheel("segtok", "1.5.11", 24_332),
    Wheel("bioc", "2.1", 33_419),
    Wheel("jsonlines", "4.0.0", 8_701),
    Wheel("intervaltree", "3.2.1", 25_929),
    Wheel("more-itertools", "11.2.1", 74_405),
    Wheel("pytorch-revgrad", "0.2.0", 4_564),
)

# Requirements that travel as stub modules: distribution -> (modules, what they are used for).
STUBS = {
    "boto3": (("boto3",), "S3 model downloads (flair.file_utils)"),
    "botocore": (("botocore", "botocore.config"), "S3 model downloads (flair.file_utils)"),
    "gdown": (("gdown", "gdown.download_folder"), "Google Drive dataset downloads"),
    "langdetect": (("langdetect",), "Sentence language detection"),
    "sqlitedict": (("sqlitedict",), "legacy embedding files"),
    "pptree": (("pptree",), "printing label trees"),
    "mpld3": (("mpld3",), "HTML plots of embeddings"),
    "wikipedia-api": (("wikipediaapi",), "Wikipedia look-ups of entity-linking datasets"),
    "docopt": (("docopt",), "bioc's command-line tools"),
    "zstandard": (("zstandard",), "reading .zst inputs (annotator.io.readers)"),
}
STUBS_WHEEL = Wheel("annotator-gpu-stubs", "1.0", 6_881)
CORPUS_BYTES = 607_524  # .gpu-data/conllpp.tar.xz as `make gpu-carry` packs CoNLL++

# "Python packages already there" (KINDS.md, read on a machine running the image 2026-11-17)
DEVICE_PACKAGES = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
# versions seen there (KINDS.md's pip list); a carried wheel of the same name takes precedence
DEVICE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}


class BudgetError(Exception):
    """One clear message: what failed and what to do."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# --- what travels besides the wheels ----------------------------------------------------------


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files the device tool sends: tracked, and untracked but not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
    )
    if listed.returncode != 0:
        raise BudgetError(
            f"{root}: not a git checkout ({listed.stderr.decode().strip()}); the "
            "device tool sends a checkout's files, so the budget needs one"
        )
    listed = listed.stdout
    paths = {root / name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name}
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


def pack_corpus(source: Path, archive: Path = CORPUS_ARCHIVE) -> int:
    """CoNLL++ as a reproducible .tar.xz (0.6 MB instead of 4.7): the check unpacks it there."""
    files = sorted(p for p in source.iterdir() if p.is_file())
    if not any("train" in p.name for p in files):
        raise BudgetError(f"{source}: no CoNLL++ training file there (give --corpus DIR)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in files:
            info = tarfile.TarInfo(f"conllpp/{path.name}")
            info.size, info.mode = path.stat().st_size, 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return archive.stat().st_size


# --- wheels -----------------------------------------------------------------------------------


def download(wheel: Wheel, folder: Path) -> Path:
    """pip's wheel for the device (CPython 3.12, manylinux x86-64), downloaded once."""
    found = [p for p in folder.glob("*.whl") if _matches(p, wheel)]
    if not found:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "-d",
            str(folder),
        ]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        result = subprocess.run(
            [*command, f"{wheel.name}=={wheel.version}"], capture_output=True, text=True
        )
        found = [p for p in folder.glob("*.whl") if _matches(p, wheel)]
        if result.returncode != 0 or not found:
            raise BudgetError(
                f"pip download {wheel.name}=={wheel.version} failed "
                "(no wheel for CPython 3.12 on manylinux x86-64?):\n"
                f"{result.stderr.strip()[-1500:]}"
            )
    return found[0]


def _matches(path: Path, wheel: Wheel) -> bool:
    name, version = path.name.split("-")[:2]
    return normalize(name) == normalize(wheel.name) and version == wheel.version


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(target: Path, members: list[tuple[zipfile.ZipInfo, bytes]]) -> None:
    """A wheel with a RECORD that matches its members (pip rewrites it on install)."""
    record_name = next(
        (info.filename for info, _ in members if info.filename.endswith(".dist-info/RECORD")), None
    )
    if record_name is None:
        raise BudgetError(f"{target.name}: no .dist-info/RECORD")
    lines = [
        _record_line(info.filename, data) for info, data in members if info.filename != record_name
    ]
    record = ("\n".join([*lines, f"{record_name},,"]) + "\n").encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info, data in members:
            out.writestr(
                info,
                record if info.filename == record_name else data,
                compress_type=zipfile.ZIP_DEFLATED,
                compresslevel=9,
            )


#: model code for TensorFlow and Flax, neither of which is on the device
OTHER_FRAMEWORKS = re.compile(r"/modeling_(tf|flax)_[^/]*\.py$")


def slim(source: Path, target: Path) -> None:
    """Copy a wheel without other frameworks' model code, its shared objects stripped of
    symbols nothing links against."""
    strip = shutil.which("strip")
    with zipfile.ZipFile(source) as wheel:
        members = [
            (info, wheel.read(info))
            for info in wheel.infolist()
            if not OTHER_FRAMEWORKS.search(info.filename)
        ]
        dropped = len(members) < len(wheel.infolist())
    if not any(".so" in Path(info.filename).suffixes for info, _ in members):
        if dropped:
            _write_wheel(target, members)
        else:
            shutil.copyfile(source, target)
        return
    if strip is None:
        raise BudgetError(
            "`strip` (binutils) is needed to slim compiled wheels: apt-get install binutils"
        )
    slimmed = []
    with tempfile.TemporaryDirectory() as scratch:
        for info, data in members:
            if ".so" in Path(info.filename).suffixes:
                path = Path(scratch) / "lib.so"
                path.write_bytes(data)
                subprocess.run([strip, "--strip-unneeded", str(path)], check=True)
                data = path.read_bytes()
            slimmed.append((info, data))
    _write_wheel(target, slimmed)


STUB_SOURCE = '''\
"""A stub of {dist} for annotator's GPU check (scripts/gpu_wheels.py): imported for {why},
which the check never uses. Any use raises."""


class _Stubbed:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> "_Stubbed":
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Stubbed(f"{{self._name}}.{{attribute}}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{{self._name}}: {dist} is a stub in annotator's GPU check ({why})")


def __getattr__(name: str) -> _Stubbed:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Stubbed(f"{{__name__}}.{{name}}")
'''


def stub_wheel(folder: Path) -> Path:
    """One pure-Python wheel holding every stub module (reproducible: fixed timestamps)."""
    dist = f"{normalize(STUBS_WHEEL.name).replace('-', '_')}-{STUBS_WHEEL.version}"
    members: list[tuple[zipfile.ZipInfo, bytes]] = []

    def add(name: str, text: str) -> None:
        members.append((zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text.encode()))

    for distribution, (modules, why) in sorted(STUBS.items()):
        for module in modules:
            add(
                module.replace(".", "/") + "/__init__.py",
                STUB_SOURCE.format(dist=distribution, why=why),
            )
    add(
        f"{dist}.dist-info/METADATA",
        f"Metadata-Version: 2.1\nName: {STUBS_WHEEL.name}\n"
        f"Version: {STUBS_WHEEL.version}\n"
        "Summary: stub modules for annotator's GPU check\n",
    )
    add(
        f"{dist}.dist-info/WHEEL",
        "Wheel-Version: 1.0\nGenerator: scripts/gpu_wheels.py\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    )
    add(f"{dist}.dist-info/RECORD", "")
    target = folder / f"{dist}-py3-none-any.whl"
    _write_wheel(target, members)
    return target


# --- the closure ------------------------------------------------------------------------------


def requirements(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(name).decode("utf-8")
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def _applies(requirement, extra: str) -> bool:
    """Whether a requirement holds on the device's interpreter, for an extra ("" for none)."""
    return requirement.marker is None or requirement.marker.evaluate(
        {**DEVICE_ENVIRONMENT, "extra": extra}
    )


def unmet(carried: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Requirements of carried wheels (and of the extras they ask of each other) that are neither
    carried at an accepted version, nor stubbed, nor on the device at an accepted version.

    `carried`: normalized name -> (version, Requires-Dist lines)."""
    from packaging.requirements import Requirement

    problems = set()
    for name, (_, lines) in carried.items():
        wanted = [
            (name, requirement)
            for requirement in map(Requirement, lines)
            if _applies(requirement, "")
        ]
        while wanted:
            owner, requirement = wanted.pop()
            needed = normalize(requirement.name)
            if needed in STUBS:
                continue
            version = carried[needed][0] if needed in carried else DEVICE_VERSIONS.get(needed)
            if needed not in carried and needed not in DEVICE_PACKAGES:
                problems.add(
                    f"{owner} needs {requirement}: not carried, not stubbed, not on the device"
                )
            elif version is not None and not requirement.specifier.contains(
                version, prereleases=True
            ):
                where = "carried" if needed in carried else "on the device"
                problems.add(f"{owner} needs {requirement}: {version} is {where}")
            elif needed in carried:  # what the extras asked for add to the package's own needs
                wanted += [
                    (f"{needed}[{extra}]", dependency)
                    for extra in requirement.extras
                    for dependency in map(Requirement, carried[needed][1])
                    if not _applies(dependency, "") and _applies(dependency, extra)
                ]
    return sorted(problems)


# --- the budget -------------------------------------------------------------------------------


def budget(wheel_bytes: int, corpus_bytes: int, limit_mib: float) -> str:
    """The size check: a line to print, or BudgetError when it does not fit."""
    tree = tree_bytes()
    total = tree + wheel_bytes + corpus_bytes
    limit = int(limit_mib * 2**20)
    line = (
        f"travels: working tree {mib(tree)} + .whl {mib(wheel_bytes)} + .gpu-data "
        f"{mib(corpus_bytes)} = {mib(total)} of {mib(limit)}"
    )
    if total > limit:
        raise BudgetError(
            f"{line}: over by {mib(total - limit)}; slim or stub a wheel, or carry less"
        )
    return f"{line}: {mib(limit - total)} to spare"


def dry_run(limit_mib: float) -> None:
    """The pinned list and the budget from the recorded sizes: offline, nothing written."""
    for wheel in (*WHEELS, STUBS_WHEEL):
        print(f"  {wheel.name}=={wheel.version:<10} {wheel.size:>12,} bytes")
    print(f"  stubbed: {', '.join(sorted(STUBS))}")
    corpus = CORPUS_ARCHIVE.stat().st_size if CORPUS_ARCHIVE.is_file() else CORPUS_BYTES
    print(budget(sum(w.size for w in (*WHEELS, STUBS_WHEEL)), corpus, limit_mib))


def real_run(corpus: Path | None, limit_mib: float) -> None:
    """Download, slim, write the stubs, check the closure and the budget."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    if WHEEL_DIR.exists():
        shutil.rmtree(WHEEL_DIR)
    WHEEL_DIR.mkdir()
    carried: dict[str, tuple[str, list[str]]] = {}
    changed = []
    for wheel in WHEELS:
        target = WHEEL_DIR / download(wheel, DOWNLOADS).name
        slim(DOWNLOADS / target.name, target)
        carried[normalize(wheel.name)] = (wheel.version, requirements(target))
        size = target.stat().st_size
        print(f"  {target.name}: {size:,} bytes")
        if size != wheel.size:
            changed.append(f'    Wheel("{wheel.name}", "{wheel.version}", {size:_}),')
    stubs = stub_wheel(WHEEL_DIR)
    if stubs.stat().st_size != STUBS_WHEEL.size:
        changed.append(f"    STUBS_WHEEL size: {stubs.stat().st_size:_}")
    print(f"  {stubs.name}: stubs of {', '.join(sorted(STUBS))}")
    problems = unmet(carried)
    if problems:
        raise BudgetError(
            "the carried wheels do not cover their requirements:\n  " + "\n  ".join(problems)
        )
    print(
        f"closure: every requirement of the {len(WHEELS)} wheels is carried, stubbed "
        "or on the device"
    )
    if corpus is not None:
        print(
            f"packed {corpus} into {CORPUS_ARCHIVE.relative_to(ROOT)}: "
            f"{pack_corpus(corpus):,} bytes"
        )
    corpus_bytes = CORPUS_ARCHIVE.stat().st_size if CORPUS_ARCHIVE.is_file() else CORPUS_BYTES
    if changed:
        print(
            "the recorded sizes (used by --dry-run) differ; update them in scripts/gpu_wheels.py:\n"
            + "\n".join(changed)
        )
    print(budget(sum(p.stat().st_size for p in WHEEL_DIR.glob("*.whl")), corpus_bytes, limit_mib))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the pinned wheels and check the budget from recorded sizes (offline)",
    )
    parser.add_argument("--corpus", type=Path, help="also pack this CoNLL++ folder into .gpu-data/")
    parser.add_argument(
        "--budget-mib",
        type=float,
        default=BUDGET_MIB,
        help="what the device tool carries (default: %(default)s MiB)",
    )
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            dry_run(args.budget_mib)
        else:
            real_run(args.corpus, args.budget_mib)
    except BudgetError as exc:
        print(f"gpu-wheels: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
