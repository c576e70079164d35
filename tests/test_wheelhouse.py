"""scripts/wheelhouse.py, offline: the torch -> vLLM table, what the kit leaves out, the parts and hashes a kit
travels in (a damaged part or wheel is named), the install from a kit folder alone, and one-line errors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "wheelhouse.sh"
_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
assert _spec and _spec.loader
wh = importlib.util.module_from_spec(_spec)
sys.modules["wheelhouse"] = wh  # dataclasses look their module up
_spec.loader.exec_module(wh)

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
HEADER = {"python": PYTHON, "glibc": "2.17", "torch": "2.11.0", "vllm": "0.24.0", "variant": "slim"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )


def _one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wheelhouse: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- which vLLM, and what goes in the kit ---------------------------------------------------------------------


def test_torch_maps_to_the_vllm_release_pinned_to_it():
    release = wh.release_for("2.11.0+cu130")  # as the host's `pip list` spells it
    assert (release.vllm, release.flashinfer, release.torchvision, release.torchaudio) == (
        "0.24.0",
        "0.6.12",
        "0.26.0",
        "2.11.0",
    )
    assert release.overrides == ("apache-tvm-ffi==0.1.15",) and release.pins == ("xgrammar==0.2.8",)


def test_an_unknown_torch_is_one_line_naming_the_known_pairs():
    with pytest.raises(wh.WheelhouseError) as err:
        wh.release_for("2.99.0")
    assert "torch 2.99.0" in str(err.value) and "torch 2.11.0 -> vllm 0.24.0" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_host_freeze_keeps_name_version_lines_without_local_versions(tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(
        "torch==2.11.0+cu130\nJinja2==3.1.6\nhuggingface_hub==1.33.0\n# a comment\n\n"
        "-e git+https://example.org/x.git#egg=x\nbar @ file:///tmp/bar-1.0-py3-none-any.whl\n"
    )
    assert wh.read_freeze(freeze) == {"torch": "2.11.0", "jinja2": "3.1.6", "huggingface-hub": "1.33.0"}


# uv's `pip compile --generate-hashes` output: who requires what, in the resolver's own words
LOCK = """\
accelerate==1.15.0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via
    #   lm-eval
    #   qk-ablate
apache-tvm-ffi==0.1.15 \\
    --hash=sha256:cccc
    # via
    #   --override overrides.txt
    #   flashinfer-python
    #   tilelang
    #   vllm
cuda-bindings==13.4.4
    # via
    #   cuda-python
    #   torch
cuda-python==13.4.4
    # via nvidia-cutlass-dsl
flashinfer-cubin==0.6.12
    # via vllm
flashinfer-python==0.6.12
    # via
    #   -r requirements.in
    #   vllm
llvmlite==0.47.0
    # via numba
lm-eval==0.4.13
    # via qk-ablate
numba==0.65.0
    # via vllm
numpy==2.5.2
    # via
    #   -c constraints.txt
    #   numba
    #   vllm
nvidia-cublas==13.1.0.3
    # via torch
nvidia-cutlass-dsl==4.5.2
    # via
    #   flashinfer-python
    #   vllm
nvidia-ml-py==13.615.71
    # via flashinfer-python
qk-ablate @ file:///tmp/x/qk_ablate-0.1.0-py3-none-any.whl \\
    --hash=sha256:dddd
    # via -r requirements.in
sympy==1.14.0
    # via torch
tilelang==0.1.9
    # via vllm
torch==2.11.0
    # via
    #   -c constraints.txt
    #   flashinfer-python
    #   qk-ablate
    #   vllm
triton==3.6.0
    # via torch
vllm==0.24.0
    # via -r requirements.in
z3-solver==4.15.4.0
    # via tilelang
"""


def test_the_lock_gives_versions_hashes_parents_and_roots():
    lock = wh.parse_lock(LOCK)
    assert {name for name, pin in lock.items() if pin.root} == {"vllm", "flashinfer-python", "qk-ablate"}
    assert lock["accelerate"].version == "1.15.0" and lock["accelerate"].hashes == {"aaaa", "bbbb"}
    assert lock["apache-tvm-ffi"].parents == {"flashinfer-python", "tilelang", "vllm"}  # the override is no parent
    assert lock["numpy"].parents == {"numba", "vllm"} and lock["qk-ablate"].hashes == {"dddd"}


def test_the_full_kit_leaves_out_the_torch_stack_its_cuda_libraries_and_the_hosts_packages():
    chosen = wh.select(wh.parse_lock(LOCK), {"numpy", "accelerate"}, slim=False)
    assert chosen["kit"] == {
        "vllm",
        "flashinfer-python",
        "qk-ablate",
        "lm-eval",
        "apache-tvm-ffi",
        "flashinfer-cubin",
        "numba",
        "llvmlite",
        "nvidia-cutlass-dsl",
        "cuda-python",  # vLLM's kernel packages' CUDA bindings: not torch's
        "nvidia-ml-py",
        "tilelang",
        "z3-solver",
    }
    # cuda-bindings is torch's even though cuda-python needs it too; sympy only torch needs, so it is not reached
    assert {"torch", "triton", "nvidia-cublas", "cuda-bindings"} <= chosen["torch"]
    assert chosen["host"] == {"numpy", "accelerate"}


def test_the_slim_kit_also_leaves_out_the_heavy_kernels_and_what_only_they_require():
    chosen = wh.select(wh.parse_lock(LOCK), {"numpy", "accelerate"}, slim=True)
    left_out = {"flashinfer-cubin", "numba", "llvmlite", "nvidia-cutlass-dsl", "cuda-python", "tilelang", "z3-solver"}
    assert chosen["slim"] == left_out
    # what a kept package needs stays, even when a left-out one needs it too
    assert {"apache-tvm-ffi", "nvidia-ml-py", "flashinfer-python", "vllm"} <= chosen["kit"]
    assert not chosen["kit"] & left_out


def test_pip_is_given_every_manylinux_tag_up_to_the_hosts_glibc():
    args = wh.Target("3.12", "2.35").pip_args()
    tags = {args[i + 1] for i, arg in enumerate(args) if arg == "--platform"}
    assert {"manylinux_2_5_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64", "manylinux2014_x86_64"} <= tags
    assert "manylinux_2_36_x86_64" not in tags
    assert args[args.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in args


def test_the_kit_records_the_oldest_glibc_all_its_wheels_accept():
    names = [
        "a-1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",  # either tag will do: 2.27
        "b-1-cp39-abi3-manylinux_2_31_x86_64.whl",
        "c-1-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "d-1-py3-none-any.whl",
    ]
    assert wh.glibc_needed([Path(name) for name in names]) == "2.31"
    assert wh.glibc_needed([Path(name) for name in names if not name.startswith("b")]) == "2.27"


# --- parts, hashes, reassembly ------------------------------------------------------------------------------


def _fake_kit(folder: Path, sizes: tuple[int, ...] = (700_000, 700_000, 800_000, 300)) -> list[Path]:
    """Wheels of random bytes (not installable, but what the hashes and parts see is bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for number, size in enumerate(sizes):
        wheel = folder / f"pkg{number}-1.{number}-py3-none-any.whl"
        wheel.write_bytes(os.urandom(size))
        wheels.append(wheel)
    return wheels


def _carried(kit: Path, to: Path) -> Path:
    """What a user copies to the host: the parts, kit.tar.sha256 and the install script."""
    to.mkdir()
    for path in [*kit.glob("kit.tar.*"), kit / "wheelhouse.sh", kit / "wheelhouse.py"]:
        shutil.copy2(path, to / path.name)
    return to


def test_the_wheels_travel_in_parts_of_at_most_the_size_and_come_back_identical(tmp_path):
    wheels = _fake_kit(tmp_path / "kit")
    parts = wh.finish(tmp_path / "kit", wheels, HEADER, ["a note"], split_mib=1)
    assert [part.name for part in parts] == ["kit.tar.part-00", "kit.tar.part-01", "kit.tar.part-02"]
    assert all(part.stat().st_size <= 1 << 20 for part in parts[:-1]) and parts[-1].stat().st_size <= 1 << 20
    assert parts[0].stat().st_size == 1 << 20
    host = _carried(tmp_path / "kit", tmp_path / "host")
    assert not list(host.glob("*.whl"))
    wh.unpack(host)
    assert [path.name for path in wh.verify(host)] == sorted(wheel.name for wheel in wheels)
    for wheel in wheels:
        assert (host / wheel.name).read_bytes() == wheel.read_bytes()
    lock = (host / "requirements.lock").read_text()
    assert lock.splitlines()[-4:] == ["pkg0==1.0", "pkg1==1.1", "pkg2==1.2", "pkg3==1.3"] and "# a note" in lock
    assert wh.lock_header(host)["python"] == PYTHON


def test_the_lock_lists_the_wheels_by_name(tmp_path):
    names = [
        "nvidia_cutlass_dsl_libs_base-4.5.2-cp312-cp312-manylinux_2_28_x86_64.whl",
        "nvidia_cutlass_dsl-4.5.2-py3-none-any.whl",
        "flashinfer_python-0.6.12-py3-none-any.whl",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    wh.finish(tmp_path, [tmp_path / name for name in names], HEADER, [], split_mib=None)
    assert not list(tmp_path.glob("kit.tar*"))
    assert [line for line in (tmp_path / "requirements.lock").read_text().splitlines() if "==" in line] == [
        "flashinfer-python==0.6.12",
        "nvidia-cutlass-dsl==4.5.2",
        "nvidia-cutlass-dsl-libs-base==4.5.2",
    ]


@pytest.fixture
def carried(tmp_path) -> Path:
    """A kit in parts, as it lands on the host."""
    wh.finish(tmp_path / "kit", _fake_kit(tmp_path / "kit"), HEADER, [], split_mib=1)
    return _carried(tmp_path / "kit", tmp_path / "host")


def test_a_damaged_part_is_named(carried):
    part = carried / "kit.tar.part-01"
    data = bytearray(part.read_bytes())
    data[1234] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(wh.WheelhouseError, match=r"^kit\.tar\.part-01 does not match kit\.tar\.sha256"):
        wh.unpack(carried)
    assert not list(carried.glob("*.whl"))  # nothing is extracted from a damaged tar


def test_a_missing_or_stray_part_is_named(carried):
    shutil.copy2(carried / "kit.tar.part-02", carried / "kit.tar.part-07")
    with pytest.raises(wh.WheelhouseError, match=r"^kit\.tar\.part-07 is not listed"):
        wh.unpack(carried)
    (carried / "kit.tar.part-07").unlink()
    (carried / "kit.tar.part-02").unlink()
    with pytest.raises(wh.WheelhouseError, match=r"^kit\.tar\.part-02 is missing .*\(3 parts expected\)"):
        wh.unpack(carried)


def test_parts_in_the_wrong_order_fail_the_whole_tar_hash(carried):
    """Each part matches its own line, but swapped contents make another tar."""
    first, second = carried / "kit.tar.part-00", carried / "kit.tar.part-01"
    sums = (carried / "kit.tar.sha256").read_text()
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)
    lines = sums.splitlines()
    lines[1], lines[2] = lines[2].replace("part-01", "part-00"), lines[1].replace("part-00", "part-01")
    (carried / "kit.tar.sha256").write_text("\n".join(lines) + "\n")
    with pytest.raises(wh.WheelhouseError, match="reassembled kit.tar does not match"):
        wh.unpack(carried)


def test_a_damaged_missing_or_unlisted_wheel_is_named(tmp_path):
    kit = tmp_path / "kit"
    wheels = _fake_kit(kit)
    wh.finish(kit, wheels, HEADER, [], split_mib=None)
    assert wh.verify(kit) == sorted(wheels)
    wheels[2].write_bytes(wheels[2].read_bytes()[:-1] + b"!")
    with pytest.raises(wh.WheelhouseError, match=r"^pkg2-1\.2-py3-none-any\.whl does not match SHA256SUMS"):
        wh.verify(kit)
    wheels[2].unlink()
    with pytest.raises(wh.WheelhouseError, match=r"^pkg2-1\.2-py3-none-any\.whl is missing"):
        wh.verify(kit)
    shutil.copy2(wheels[0], wheels[2])
    wh.finish(kit, wheels, HEADER, [], split_mib=None)
    (kit / "stranger-9.9-py3-none-any.whl").write_bytes(b"?")
    with pytest.raises(wh.WheelhouseError, match=r"^stranger-9\.9-py3-none-any\.whl is in .* not in SHA256SUMS"):
        wh.verify(kit)


# --- install, from the kit folder alone ---------------------------------------------------------------------


def _real_wheel(folder: Path) -> Path:
    """A minimal installable wheel: one module, METADATA, WHEEL and RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tiny_kit_probe-1.0-py3-none-any.whl"
    info = "tiny_kit_probe-1.0.dist-info"
    files = {
        "tiny_kit_probe.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: tiny-kit-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]))
    return wheel


def test_install_from_the_carried_parts_alone_lands_the_wheels(tmp_path):
    kit = tmp_path / "kit"
    wh.finish(kit, [_real_wheel(kit)], HEADER, [], split_mib=1)
    host = _carried(kit, tmp_path / "host")
    done = subprocess.run(
        ["bash", str(host / "wheelhouse.sh"), "install", str(host), "--target", str(tmp_path / "site")]
        + ["--python", sys.executable, "--no-check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "installing 1 wheels" in done.stdout and "import check skipped" in done.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import tiny_kit_probe; print(tiny_kit_probe.VALUE)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert probe.stdout.strip() == "42"


def test_install_refuses_another_python_or_an_older_glibc():
    with pytest.raises(wh.WheelhouseError, match=rf"is Python {PYTHON}, the kit is for 3\.99: pass --python"):
        wh._check_python(sys.executable, {**HEADER, "python": "3.99"})
    libc = os.confstr("CS_GNU_LIBC_VERSION")
    if libc:  # glibc Linux, as every host this is for
        with pytest.raises(wh.WheelhouseError, match=r"the kit's wheels need 2\.99: build with --glibc"):
            wh._check_python(sys.executable, {**HEADER, "glibc": "2.99"})
    wh._check_python(sys.executable, HEADER)


def test_install_names_what_it_would_replace_on_the_host(tmp_path):
    """A kit built without the host's freeze may carry other versions of what the host has: they are named."""
    pytest_version, packaging_version = importlib.metadata.version("pytest"), importlib.metadata.version("packaging")
    wheels = [
        tmp_path / "pytest-0.0.1-py3-none-any.whl",
        tmp_path / f"packaging-{packaging_version}-py3-none-any.whl",
        tmp_path / "not_installed_anywhere-1.0-py3-none-any.whl",
    ]
    assert wh.replaced(sys.executable, wheels) == [f"pytest {pytest_version} -> 0.0.1"]


# --- one-line errors ----------------------------------------------------------------------------------------


def test_install_errors_are_one_line(tmp_path, carried):
    _one_line_error(_cli("install", str(tmp_path / "nowhere")), "is not a folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("install", str(tmp_path / "empty")), "has no SHA256SUMS")
    (carried / "kit.tar.part-00").write_bytes(b"garbage")
    _one_line_error(_cli("install", str(carried)), "kit.tar.part-00 does not match")
    (carried / "kit.tar.sha256").unlink()
    _one_line_error(_cli("install", str(carried)), "no kit.tar.sha256")


def test_build_errors_are_one_line_and_come_before_any_download(tmp_path):
    out = str(tmp_path / "kit")
    _one_line_error(_cli("build", "--out", out, "--torch", "2.99.0"), "no vLLM release is known for torch 2.99.0")
    _one_line_error(_cli("build", "--out", out, "--split-mib", "0"), "--split-mib 0")
    _one_line_error(_cli("build", "--out", out, "--glibc", "2.30"), "--glibc 2.30", "2.35")
    _one_line_error(_cli("build", "--out", out, "--python", "312"), "--python 312")
    _one_line_error(_cli("build", "--out", out, "--host-packages", str(tmp_path / "no.txt")), "cannot read")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("torch==2.10.0+cu128\n")
    _one_line_error(_cli("build", "--out", out, "--host-packages", str(freeze)), "torch 2.10.0")
    _one_line_error(_cli("build", "--out", out, "--host-packages", str(freeze), "--torch", "2.11.0"), "drop --torch")
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "old").write_text("x")
    _one_line_error(_cli("build", "--out", out), "is not empty")
    assert not (tmp_path / "kit" / ".work").exists()


def test_usage_errors_and_a_missing_python_are_one_line():
    _one_line_error(_cli("frobnicate"), "invalid choice")
    _one_line_error(_cli("install"), "required: dir")
    _one_line_error(_cli("build", "--split-mib", "many"), "invalid int value")
    done = _cli("install", ".", env={"WHEELHOUSE_PYTHON": "/nonexistent/python3"})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "WHEELHOUSE_PYTHON" in done.stderr
