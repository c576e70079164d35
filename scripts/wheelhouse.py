"""An offline wheelhouse for the vLLM engine on a CUDA host that already has its torch (docs/gpu.md).

`build` runs where a package registry is reachable: it resolves vLLM (the release pinned to the host's torch),
FlashInfer and this project for the host's Python and platform, downloads their wheels (never torch, its CUDA
libraries, or what the host already has) and writes SHA256SUMS, requirements.lock and this script beside them,
optionally packed into one tar split into parts. `install` runs on the offline host: it reassembles the parts,
checks every hash and installs the exact set with `pip install --no-index --no-deps`.
Standard library only, so it runs on any python3 >= 3.10 with pip; `build` puts uv in .wheelhouse-tools/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UV = "uv==0.13.9"  # the resolver: it resolves for another platform and Python and takes overrides; pip does neither
# glibc versions uv resolves for; vLLM's own wheel needs 2.28, and llguidance 1.7 (vLLM 0.24's range) has no wheel below 2.31
GLIBCS = ("2.28", *(f"2.{minor}" for minor in range(31, 41)))


@dataclass(frozen=True)
class Release:
    """The vLLM release pinned to one torch, with what travels beside it."""

    torch: str
    vllm: str
    flashinfer: str  # flashinfer-python, the version vLLM pins: its V2 sampler imports it at engine start
    torchvision: str
    torchaudio: str
    overrides: tuple[str, ...] = ()  # replace every requirement on these names, vLLM's pins included
    pins: tuple[str, ...] = ()  # versions measured with the overrides


RELEASES = {
    "2.11.0": Release(
        torch="2.11.0",
        vllm="0.24.0",
        flashinfer="0.6.12",
        torchvision="0.26.0",
        torchaudio="2.11.0",
        # vLLM 0.24 pins apache-tvm-ffi==0.1.9, which only xgrammar <= 0.2.3 accepts (newer ones want >= 0.1.11).
        # The xgrammar measured on a GPU host, 0.2.8, calls load_lib_module(extra_lib_paths=...), which tvm-ffi
        # 0.1.15 has and 0.1.9 lacks: so the kit overrides vLLM's pin (FlashInfer accepts any 0.1.x from 0.1.6;
        # 0.1.15 is yanked on PyPI, which an exact pin still gets). pip's resolver refuses an override, which is
        # why the host installs the exact resolved set with --no-deps.
        overrides=("apache-tvm-ffi==0.1.15",),
        pins=("xgrammar==0.2.8",),
    ),
}
TORCH_STACK = ("torch", "torchvision", "torchaudio", "triton")  # the host's; so are the CUDA libraries torch brings
# Left out by --slim: what a dense model in bf16/fp32 never imports (docs/gpu.md has the evidence).
SLIM_OUT = {
    "flashinfer-cubin": "FlashInfer's prebuilt kernels; without them it compiles at first use",
    "tilelang": "mHC kernels of DeepSeek-V4",
    "nvidia-cutlass-dsl": "CuTe DSL kernels (FlashAttention 4 on Blackwell, Mamba, DeepSeek-V4)",
    "quack-kernels": "CuTe DSL helpers of the same kernels",
    "tokenspeed-mla": "an MLA attention backend",
    "humming-kernels": "the humming mixed-precision quantization",
    "fastsafetensors": "load_format=fastsafetensors",
    "nvidia-cudnn-frontend": "FlashInfer's cuDNN attention and GEMM paths",
    "cuda-tile": "FlashInfer's cuTile kernels; brings nvcc, nvvm and tileiras",
    "numba": "n-gram speculative decoding; brings llvmlite",
    "opencv-python-headless": "video inputs and Pixtral images (cv2 is imported under try)",
}


class WheelhouseError(Exception):
    """A user-facing failure: printed as one line, no traceback."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_version(version: str) -> str:
    """`2.11.0+cu130` -> `2.11.0`: the registry knows no local versions."""
    return version.split("+", 1)[0]


def release_for(torch: str) -> Release:
    try:
        return RELEASES[base_version(torch)]
    except KeyError:
        known = ", ".join(f"torch {t} -> vllm {r.vllm}" for t, r in RELEASES.items())
        raise WheelhouseError(
            f"no vLLM release is known for torch {torch} (known: {known}): add the vLLM release"
            " pinned to it to RELEASES in wheelhouse.py, or pass a known --torch"
        ) from None


def read_freeze(path: Path) -> dict[str, str]:
    """`pip list --format=freeze` output as {name: version}; editable and URL installs carry no version."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise WheelhouseError(f"cannot read --host-packages {path}: {err.strerror}") from None
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(#.*)?", line)
        if match:
            pins[normalize(match.group(1))] = base_version(match.group(2))
    if not pins:
        raise WheelhouseError(
            f"--host-packages {path} has no name==version line: write it with `pip list --format=freeze`"
        )
    return pins


@dataclass
class Pin:
    """One package of the resolver's lock: its version, the registry's hashes and who requires it."""

    version: str
    hashes: set[str] = field(default_factory=set)
    parents: set[str] = field(default_factory=set)
    root: bool = False


def parse_lock(text: str) -> dict[str, Pin]:
    """uv's `pip compile --generate-hashes` output (split annotations) as {name: Pin}."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in text.splitlines():
        line = raw.strip().rstrip("\\").strip()
        if raw[:1] not in ("", " ", "#"):
            match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+)|@\s*\S+)", line)
            if not match:
                raise WheelhouseError(f"unexpected line in the resolver's output: {line}")
            current = pins.setdefault(normalize(match.group(1)), Pin(match.group(2) or ""))
        elif current is None:
            continue
        elif line.startswith("--hash=sha256:"):
            current.hashes.add(line.removeprefix("--hash=sha256:"))
        elif line.startswith("#"):
            via = line.lstrip("#").strip().removeprefix("via").strip()
            if via.startswith("-r "):
                current.root = True
            elif via and not via.startswith("-"):
                current.parents.add(normalize(via))
    return pins


def reachable(pins: dict[str, Pin], starts: Iterable[str], cut: Collection[str] = ()) -> set[str]:
    """The packages `starts` require, directly or not, never entering `cut`."""
    children: dict[str, set[str]] = {}
    for name, pin in pins.items():
        for parent in pin.parents:
            children.setdefault(parent, set()).add(name)
    seen: set[str] = set()
    todo = [name for name in starts if name not in cut]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(child for child in children.get(name, ()) if child not in cut)
    return seen


def torch_brings(pins: dict[str, Pin]) -> set[str]:
    """The torch stack and the CUDA libraries it requires (nvidia-*, cuda-*): the host has them with its torch.
    vLLM's own nvidia-/cuda- kernel packages (nvidia-cutlass-dsl, cuda-tile ...) are not among them."""
    below = reachable(pins, [name for name in TORCH_STACK if name in pins])
    return set(TORCH_STACK) | {name for name in below if name.startswith(("nvidia-", "cuda-"))}


def select(pins: dict[str, Pin], host: set[str], slim: bool) -> dict[str, set[str]]:
    """What goes in the kit, and what is left out and why: a package reached only through one that is left
    out is left out too (the host has it, or nothing in the kit imports it)."""
    roots = [name for name, pin in pins.items() if pin.root]
    stack = torch_brings(pins)
    everything = reachable(pins, roots, stack)
    with_host = reachable(pins, roots, stack | host)
    kit = reachable(pins, roots, stack | host | (set(SLIM_OUT) if slim else set()))
    return {"kit": kit, "torch": stack & set(pins), "host": everything - with_host, "slim": with_host - kit}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Parts:
    """A write-only stream that lands in `stem.part-00`, `-01` ... of at most `size` bytes each, hashed."""

    def __init__(self, stem: Path, size: int) -> None:
        self.stem, self.size, self.paths, self.digest, self.file = stem, size, [], hashlib.sha256(), None
        self.left = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            if not self.left:
                if self.file:
                    self.file.close()
                self.paths.append(Path(f"{self.stem}.part-{len(self.paths):02d}"))
                self.file, self.left = self.paths[-1].open("wb"), self.size
            chunk = view[: self.left]
            self.file.write(chunk)
            self.left -= len(chunk)
            view = view[len(chunk) :]
        return len(data)

    def close(self) -> None:
        if self.file:
            self.file.close()


def pack(files: list[Path], out: Path, part_bytes: int) -> list[Path]:
    """`files` into one tar split into `out/kit.tar.part-NN`; `kit.tar.sha256` holds the tar's and each part's hash."""
    parts = _Parts(out / "kit.tar", part_bytes)
    with tarfile.open(fileobj=parts, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    parts.close()
    lines = [f"{parts.digest.hexdigest()}  kit.tar"] + [f"{sha256(path)}  {path.name}" for path in parts.paths]
    (out / "kit.tar.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return parts.paths


def _sums(path: Path) -> dict[str, str]:
    """A `sha256sum` file as {file name: hash}."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not re.fullmatch(r"[\w.+-]+", name):
            raise WheelhouseError(f"{path.name} has a malformed line {line!r}: copy it again from the kit")
        sums[name] = digest
    return sums


class _Reader:
    """The parts, read as one stream (what tarfile's stream mode asks of a file)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.file = list(paths), None

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0:
            if self.file is None:
                if not self.paths:
                    break
                self.file = self.paths.pop(0).open("rb")
            chunk = self.file.read(size)
            if not chunk:
                self.file.close()
                self.file = None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def unpack(kit: Path) -> None:
    """Check the parts against kit.tar.sha256, then extract the tar's plain files into `kit`."""
    if not (kit / "kit.tar.sha256").is_file():
        raise WheelhouseError(f"{kit} has kit.tar.part-* but no kit.tar.sha256: copy it from the kit too")
    sums = _sums(kit / "kit.tar.sha256")
    listed = sorted((name for name in sums if name != "kit.tar"), key=lambda name: int(name.rsplit("-", 1)[-1]))
    if not all(re.fullmatch(r"kit\.tar\.part-\d+", name) for name in listed):
        raise WheelhouseError("kit.tar.sha256 names files other than kit.tar and its parts: copy it again from the kit")
    strays = sorted(path.name for path in kit.glob("kit.tar.part-*") if path.name not in sums)
    if strays:
        raise WheelhouseError(f"{strays[0]} is not listed in kit.tar.sha256 (from another kit?): remove it")
    whole = hashlib.sha256()
    for name in listed:
        if not (kit / name).is_file():
            raise WheelhouseError(f"{name} is missing from {kit} ({len(listed)} parts expected): copy it from the kit")
        part = hashlib.sha256()
        with (kit / name).open("rb") as file:
            for block in iter(lambda file=file: file.read(1 << 20), b""):
                part.update(block)
                whole.update(block)
        if part.hexdigest() != sums[name]:
            raise WheelhouseError(f"{name} does not match kit.tar.sha256 (damaged in transfer?): copy it again")
    if whole.hexdigest() != sums.get("kit.tar"):
        raise WheelhouseError("the reassembled kit.tar does not match kit.tar.sha256: copy the parts again")
    with tarfile.open(fileobj=_Reader([kit / name for name in listed]), mode="r|") as tar:
        for member in tar:
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise WheelhouseError(f"kit.tar holds {member.name!r}, not a plain file: rebuild the kit")
            source = tar.extractfile(member)
            assert source is not None  # a regular file's member always has its data
            with (kit / member.name).open("wb") as target:
                shutil.copyfileobj(source, target)


def verify(kit: Path) -> list[Path]:
    """Every wheel named in SHA256SUMS is there and matches; no other wheel is. Returns them."""
    if not (kit / "SHA256SUMS").is_file():
        raise WheelhouseError(f"{kit} has no SHA256SUMS: pass the kit's folder (the one wheelhouse.sh build wrote)")
    sums = _sums(kit / "SHA256SUMS")
    for name, digest in sums.items():
        if not (kit / name).is_file():
            raise WheelhouseError(f"{name} is missing from {kit}: copy it from the kit")
        if sha256(kit / name) != digest:
            raise WheelhouseError(f"{name} does not match SHA256SUMS (damaged or replaced): copy it again from the kit")
    extra = sorted(path.name for path in kit.glob("*.whl") if path.name not in sums)
    if extra:
        raise WheelhouseError(f"{extra[0]} is in {kit} but not in SHA256SUMS: remove it, or rebuild the kit with it")
    return [kit / name for name in sorted(sums)]


def lock_header(kit: Path) -> dict[str, str]:
    """The `# key: value` lines at the top of requirements.lock (python, torch, vllm, variant)."""
    header = {}
    for line in (kit / "requirements.lock").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"# (\w+): (.*)", line)
        if match:
            header[match.group(1)] = match.group(2)
    return header


def _name_version(wheel: str) -> tuple[str, str]:
    """`flashinfer_python-0.6.12-py3-none-any.whl` -> ("flashinfer-python", "0.6.12")."""
    name, version = wheel.split("-")[:2]
    return normalize(name), version


LEGACY_GLIBC = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}


def glibc_needed(wheels: list[Path]) -> str:
    """The oldest glibc that takes every wheel: the largest over wheels of each wheel's most lenient tag."""
    need = 0
    for wheel in wheels:
        tags = wheel.name.removesuffix(".whl").split("-")[-1].split(".")
        minors = [int(m.group(1)) for tag in tags if (m := re.fullmatch(r"manylinux_2_(\d+)_\w+", tag))]
        minors += [LEGACY_GLIBC[tag.rsplit("_", 2)[0]] for tag in tags if tag.rsplit("_", 2)[0] in LEGACY_GLIBC]
        need = max(need, min(minors, default=0))
    return f"2.{need}"


def finish(
    out: Path, wheels: list[Path], header: dict[str, str], notes: list[str], split_mib: int | None
) -> list[Path]:
    """SHA256SUMS, requirements.lock and this script beside the wheels; with `split_mib`, the parts too."""
    (out / "SHA256SUMS").write_text("".join(f"{sha256(w)}  {w.name}\n" for w in sorted(wheels)), encoding="utf-8")
    names = [f"{name}=={version}" for name, version in sorted(_name_version(w.name) for w in wheels)]
    lines = [f"# {key}: {value}" for key, value in header.items()] + [f"# {note}" for note in notes] + names
    (out / "requirements.lock").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for script in ("wheelhouse.sh", "wheelhouse.py"):
        shutil.copy2(HERE / script, out / script)
    if not split_mib:
        return []
    return pack(sorted(wheels) + [out / "SHA256SUMS", out / "requirements.lock"], out, split_mib << 20)


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        last = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise WheelhouseError(f"{what} failed: {last[-1] if last else f'exit {done.returncode}'}")


@dataclass(frozen=True)
class Target:
    """The host the kit is for: CPython `python` on x86_64 Linux with glibc `glibc`."""

    python: str
    glibc: str

    def __str__(self) -> str:
        return f"CPython {self.python}, x86_64 Linux with glibc >= {self.glibc}"

    def pip_args(self) -> list[str]:
        """pip download's flags for it; pip matches manylinux tags exactly, so every tag the host accepts is listed."""
        minor = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{m}_x86_64" for m in range(5, minor + 1)]
        tags += ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        return args + [arg for tag in tags for arg in ("--platform", tag)]


def _uv() -> Path:
    """uv in a throwaway venv beside the repository."""
    tools = ROOT / ".wheelhouse-tools"
    uv = tools / "bin" / "uv"
    if not uv.exists():
        _run([sys.executable, "-m", "venv", str(tools)], "creating .wheelhouse-tools")
        _run([str(tools / "bin" / "python"), "-m", "pip", "install", "-q", UV], f"pip install {UV}")
    return uv


def resolve(work: Path, target: Target, requirements: list[str], constraints: list[str], overrides: list[str]) -> str:
    """The resolver's lock for `target`, with hashes and who requires what."""
    files = {"requirements.in": requirements, "constraints.txt": constraints, "overrides.txt": overrides}
    for name, lines in files.items():
        (work / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [str(_uv()), "pip", "compile", str(work / "requirements.in"), "--generate-hashes", "--no-header"]
    args += ["--python-platform", f"x86_64-manylinux_{target.glibc.replace('.', '_')}"]
    args += ["--python-version", target.python, "--constraints", str(work / "constraints.txt")]
    args += ["--overrides", str(work / "overrides.txt")]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip() and not line.startswith("warning")]
        lines = [line for line in lines if not line.startswith(("error: No solution", "hint:"))]
        raise WheelhouseError("no set of packages fits: " + " ".join(lines).replace("cause: ", ""))
    return done.stdout


def download(name: str, version: str, target: Target, dest: Path) -> tuple[Path, bool]:
    """The wheel of `name==version` for `target`; a pure-Python package without one is built here from its sdist.
    Returns the wheel and whether it came from the registry as is."""
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    spec = f"{name}=={version}"
    got = subprocess.run(
        [*pip, "download", "--no-deps", *target.pip_args(), "-d", str(dest), spec], capture_output=True, text=True
    )
    if got.returncode and "No matching distribution" not in got.stderr:
        raise WheelhouseError(f"pip download {spec} failed: {got.stderr.strip().splitlines()[-1]}")
    if got.returncode:
        _run([*pip, "wheel", "--no-deps", "-w", str(dest), spec], f"building {spec} from its sdist")
    found = list(dest.glob("*.whl"))
    if len(found) != 1:
        raise WheelhouseError(f"pip left {len(found)} wheels for {spec} in {dest}: build again")
    if got.returncode and not found[0].name.endswith("-none-any.whl"):
        raise WheelhouseError(
            f"{spec} has no wheel for {target} and builds only {found[0].name} here: try another --glibc"
        )
    return found[0], not got.returncode


def _check_build_args(args: argparse.Namespace, host: dict[str, str]) -> Release:
    """The release for the host's torch, after every check that needs no network."""
    torch = args.torch or host.get("torch", "2.11.0")
    if "torch" in host and base_version(torch) != host["torch"]:
        raise WheelhouseError(f"--torch {torch} but --host-packages has torch {host['torch']}: drop --torch")
    release = release_for(torch)
    if args.split_mib is not None and args.split_mib < 1:
        raise WheelhouseError(f"--split-mib {args.split_mib}: give a part size of at least 1 MiB")
    if args.glibc not in GLIBCS:
        raise WheelhouseError(
            f"--glibc {args.glibc}: give the host's glibc (`ldd --version`), one of {', '.join(GLIBCS)}"
        )
    if not re.fullmatch(r"3\.\d+", args.python):
        raise WheelhouseError(f"--python {args.python}: give the host's Python as major.minor, e.g. 3.12")
    if not (ROOT / "pyproject.toml").is_file():
        raise WheelhouseError(f"build runs from the qk-ablate repository; {ROOT} has no pyproject.toml")
    if Path(args.out).exists() and (not Path(args.out).is_dir() or any(Path(args.out).iterdir())):
        raise WheelhouseError(f"--out {args.out} is not empty: remove it or pick another folder")
    return release


def _lock(
    work: Path, target: Target, release: Release, requirements: list[str], host: dict[str, str]
) -> tuple[str, list[str]]:
    """The resolver's lock, the torch stack fixed and the host's packages at their versions, and notes on it."""
    constraints = [f"torch=={release.torch}", f"torchvision=={release.torchvision}"]
    constraints += [f"torchaudio=={release.torchaudio}", *release.pins]
    host_pins = [f"{name}=={version}" for name, version in sorted(host.items())]
    try:
        return resolve(work, target, requirements, constraints + host_pins, list(release.overrides)), []
    except WheelhouseError as err:
        if not host_pins:
            raise
        # The kit installs with --no-deps and never replaces a host package, so the host's versions win over a
        # requirement they break (numba 0.65 wants numpy < 2.5; the host may have 2.5); the lock says which.
        note = f"the host's versions override a requirement they break ({err})"
        print(f"wheelhouse: warning: {note}", file=sys.stderr)
        return resolve(work, target, requirements, constraints, [*release.overrides, *host_pins]), [note]


def build(args: argparse.Namespace) -> None:
    started = time.monotonic()
    host = read_freeze(Path(args.host_packages)) if args.host_packages else {}
    release = _check_build_args(args, host)
    target, out = Target(args.python, args.glibc), Path(args.out).resolve()
    work = out / ".work"
    work.mkdir(parents=True)
    print(f"wheelhouse: torch {release.torch} -> vllm {release.vllm}; {target}; {'slim' if args.slim else 'full'} kit")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(work)], "building qk-ablate")
    (project,) = work.glob("qk_ablate-*.whl")
    requirements = [f"vllm=={release.vllm}", f"flashinfer-python=={release.flashinfer}"]
    # What the kit chooses replaces the host's copy; the host's other packages stay as they are.
    ours = {normalize(re.split(r"[=<>]", spec)[0]) for spec in requirements + [*release.overrides, *release.pins]}
    ours |= {"qk-ablate", *TORCH_STACK}
    host = {name: version for name, version in host.items() if name not in ours}
    text, notes = _lock(work, target, release, [*requirements, f"qk-ablate @ {project.as_uri()}"], host)
    lock = parse_lock(text)
    chosen = select(lock, set(host), args.slim)
    print(f"  left out: {len(chosen['torch'])} the host's torch brings, {len(chosen['host'])} the host has")
    if args.slim:
        print("  left out by --slim:")
        for name in sorted(chosen["slim"] & set(SLIM_OUT)):
            print(f"    {name:24} {SLIM_OUT[name]}")
        print(f"    and what only they require: {' '.join(sorted(chosen['slim'] - set(SLIM_OUT)))}")
    todo = sorted(chosen["kit"] - {"qk-ablate"})
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda name: download(name, lock[name].version, target, work / name), todo))
    wheels = [Path(shutil.copy2(project, out / project.name))]
    for name, (wheel, from_registry) in zip(todo, got):
        if from_registry and lock[name].hashes and sha256(wheel) not in lock[name].hashes:
            raise WheelhouseError(f"{wheel.name} does not match the registry's hashes for {name}: build again")
        if not from_registry:
            notes.append(f"{wheel.name} is built here from its sdist (the registry has no wheel)")
        wheels.append(Path(shutil.move(wheel, out / wheel.name)))
    shutil.rmtree(work)
    header = {"python": target.python, "glibc": glibc_needed(wheels), "torch": release.torch, "vllm": release.vllm}
    header |= {"variant": "slim" if args.slim else "full", "overrides": " ".join(release.overrides)}
    parts = finish(out, wheels, header, notes, args.split_mib)
    size = sum(wheel.stat().st_size for wheel in wheels) / (1 << 20)
    print(f"wheelhouse: {len(wheels)} wheels, {size:.0f} MiB in {out} ({time.monotonic() - started:.0f} s)")
    if parts:
        print(f"  {len(parts)} parts of at most {args.split_mib} MiB: copy them, kit.tar.sha256 and wheelhouse.sh/.py")
    print("  on the host: bash wheelhouse.sh install <the folder>   (docs/gpu.md)")


CHECK = """
import importlib, importlib.metadata as md, sys
for module, dist in [("vllm", "vllm"), ("flashinfer", "flashinfer-python"), ("xgrammar", "xgrammar"),
                     ("lm_eval", "lm-eval"), ("transformers", "transformers"), ("torch", "torch"), ("qk_ablate", "qk-ablate")]:
    try:
        importlib.import_module(module)
    except Exception as err:
        sys.exit(f"{module}: {type(err).__name__}: {err}")
    print(f"  {module} {md.version(dist)}")
import torch
if torch.__version__.split("+")[0] != sys.argv[1]:
    sys.exit(f"torch is {torch.__version__}, the kit is built for torch {sys.argv[1]}")
"""
PROBE = "import os, sys; print('%d.%d' % sys.version_info[:2], os.confstr('CS_GNU_LIBC_VERSION') or '')"
INSTALLED = "import importlib.metadata as md\nfor d in md.distributions(): print(d.metadata['Name'], d.version)"


def _check_python(python: str, header: dict[str, str]) -> None:
    """The host's python is the Python the kit is for, on a glibc its wheels accept."""
    probe = subprocess.run([python, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode:
        raise WheelhouseError(f"cannot run {python}: pass --python, the host's python3 (the one with torch)")
    version, _, libc = probe.stdout.strip().partition(" glibc ")
    if version != header.get("python"):
        raise WheelhouseError(f"{python} is Python {version}, the kit is for {header.get('python')}: pass --python")
    have, need = (tuple(map(int, v.split("."))) for v in (libc or "0.0", header.get("glibc", "0.0")))
    if libc and have < need:
        raise WheelhouseError(
            f"the host's glibc is {libc}, the kit's wheels need {header['glibc']}: build with --glibc {libc}"
        )


def replaced(python: str, wheels: list[Path]) -> list[str]:
    """The packages `python` has that the kit would replace with another version (`numpy 2.5.2 -> 2.4.1`)."""
    listed = subprocess.run([python, "-c", INSTALLED], capture_output=True, text=True).stdout.split("\n")
    have = {normalize(line.split()[0]): line.split()[1] for line in listed if len(line.split()) == 2}
    kit = [_name_version(wheel.name) for wheel in wheels]
    return [f"{name} {have[name]} -> {version}" for name, version in kit if have.get(name, version) != version]


def install(args: argparse.Namespace) -> None:
    kit = Path(args.dir).resolve()
    if not kit.is_dir():
        raise WheelhouseError(f"{kit} is not a folder: pass the kit's folder (with SHA256SUMS or kit.tar.part-*)")
    if list(kit.glob("kit.tar.part-*")):
        unpack(kit)
    wheels = verify(kit)
    header = lock_header(kit)
    python = shutil.which(args.python) or args.python
    _check_python(python, header)
    into = ["--target", str(Path(args.target).resolve()), "--upgrade"] if args.target else []
    changes = [] if args.target else replaced(python, wheels)
    if changes:
        print(
            f"wheelhouse: note: replaces {len(changes)} packages {python} has ({', '.join(changes[:6])}"
            f"{' ...' if len(changes) > 6 else ''}); a kit built with this host's --host-packages keeps them",
            file=sys.stderr,
        )
    print(f"wheelhouse: installing {len(wheels)} wheels with {python}{' into ' + args.target if args.target else ''}")
    done = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "-q", *into, *map(str, wheels)])
    if done.returncode:
        raise WheelhouseError(f"pip install failed (exit {done.returncode}; its message is above)")
    if args.no_check:
        print("wheelhouse: installed; import check skipped (--no-check)")
        return
    env = dict(os.environ)
    if args.target:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.target).resolve()), env.get("PYTHONPATH")]))
    checked = subprocess.run([python, "-c", CHECK, header.get("torch", "")], env=env, capture_output=True, text=True)
    print(checked.stdout, end="")
    if checked.returncode:
        reason = checked.stderr.strip().splitlines()[-1] if checked.stderr.strip() else f"exit {checked.returncode}"
        raise WheelhouseError(f"installed, but the import check failed: {reason}")
    if "\nflashinfer-cubin==" in (kit / "requirements.lock").read_text(encoding="utf-8"):
        print("wheelhouse: ready; FlashInfer's kernels come prebuilt (flashinfer-cubin)")
    else:
        print(
            "wheelhouse: ready; without flashinfer-cubin the first engine start JIT-compiles FlashInfer's sampling"
            " kernels (needs nvcc, minutes): set VLLM_USE_FLASHINFER_SAMPLER=0 to skip them, or build the full kit"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"wheelhouse: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="wheelhouse.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = commands.add_parser("build", help="download the kit (where a package registry is reachable)")
    b.add_argument("--out", default="wheelhouse", help="the kit's folder (new or empty)")
    b.add_argument("--torch", help="the host's torch (default: from --host-packages, else 2.11.0)")
    b.add_argument("--python", default="3.12", help="the host's Python, major.minor")
    b.add_argument("--glibc", default="2.35", help="the host's glibc (`ldd --version`), 2.28 or 2.31 ... 2.40")
    b.add_argument("--slim", action="store_true", help="leave out the kernel packages a dense model never imports")
    b.add_argument("--split-mib", type=int, help="also pack the wheels into a tar split into parts of at most N MiB")
    b.add_argument("--host-packages", metavar="FREEZE_FILE", help="the host's `pip list --format=freeze`")
    i = commands.add_parser("install", help="install a kit on the offline host")
    i.add_argument("dir", help="the kit's folder: the wheels, or kit.tar.part-* and kit.tar.sha256")
    i.add_argument("--target", help="install into this folder instead of the environment (pip --target)")
    i.add_argument("--python", default="python3", help="the host's python, the one with torch")
    i.add_argument("--no-check", action="store_true", help="skip the import check (e.g. on a machine without CUDA)")
    args = parser.parse_args(argv)
    try:
        (build if args.command == "build" else install)(args)
    except WheelhouseError as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wheelhouse: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
