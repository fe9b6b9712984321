"""The dependency locks (scripts/lock): complete, hashed, installed, and the only way in.

requirements-dev.lock (runtime + test + bench) is what scripts/bootstrap installs; requirements.lock
(runtime only) is what the Dockerfile installs. Both must pin every dependency of pyproject.toml
with sha256 hashes, the running environment must hold exactly the pinned versions, and both
installers must use pip's --require-hashes mode on the lock before adding the project itself
without dependencies.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements-dev.lock"
RUNTIME_LOCK = ROOT / "requirements.lock"
PROJECT = "gpu-extender"


@dataclass
class Pin:
    name: str  # canonical
    version: str
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, as pip and the shell read them."""
    return re.sub(r"\\\n", " ", text).splitlines()


def parse_lock(text: str) -> dict[str, Pin]:
    """name -> Pin; fails on anything but `name==version --hash=...` entries and comments."""
    pins: dict[str, Pin] = {}
    last: Pin | None = None
    in_via = False
    for line in logical_lines(text):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if last is None:
                continue  # the header
            if comment.startswith("via"):
                rest = comment[3:].strip()
                in_via = not rest
                if rest:
                    last.via.add(rest)
            elif in_via and comment:
                last.via.add(comment)
            continue
        in_via = False
        words = stripped.split()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", words[0])
        assert m, f"lock entry is not pinned with ==: {stripped[:80]!r}"
        hashes = []
        for option in words[1:]:
            assert option.startswith("--hash=sha256:"), f"unexpected option {option!r} in {words[0]}"
            digest = option.removeprefix("--hash=sha256:")
            assert re.fullmatch(r"[0-9a-f]{64}", digest), f"malformed sha256 {digest!r} in {words[0]}"
            hashes.append(digest)
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{name} pinned twice"
        last = pins[name] = Pin(name, m.group(2), hashes)
    return pins


def pyproject_requirements() -> tuple[list[Requirement], list[Requirement]]:
    """(runtime dependencies, runtime + test + bench dependencies)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = project["optional-dependencies"]
    return runtime, runtime + [Requirement(r) for r in extras["test"] + extras["bench"]]


RUNTIME_REQS, ALL_REQS = pyproject_requirements()
LOCKS = {
    "requirements-dev.lock": (DEV_LOCK, ALL_REQS),
    "requirements.lock": (RUNTIME_LOCK, RUNTIME_REQS),
}


@pytest.fixture(scope="module")
def dev_pins() -> dict[str, Pin]:
    return parse_lock(DEV_LOCK.read_text())


@pytest.fixture(scope="module")
def runtime_pins() -> dict[str, Pin]:
    return parse_lock(RUNTIME_LOCK.read_text())


# (a) the locks pin every declared dependency, with hashes


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_is_generated_by_scripts_lock(lock):
    path, _ = LOCKS[lock]
    header = path.read_text().splitlines()[0]
    assert header.startswith("#") and "scripts/lock" in header
    assert (ROOT / "scripts" / "lock").stat().st_mode & 0o111, "scripts/lock is not executable"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_declared_dependency_is_pinned_with_hashes(lock):
    path, requirements = LOCKS[lock]
    pins = parse_lock(path.read_text())
    assert pins, f"{lock} pins nothing"
    for req in requirements:
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} from pyproject.toml is not in {lock}"
        assert pin.hashes, f"{pin.name}=={pin.version} has no --hash=sha256: in {lock}"
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock} pins {pin.name}=={pin.version}, outside pyproject.toml's {req}: run scripts/lock"
        )
    # pip's --require-hashes refuses the whole file if any entry, direct or not, lacks a hash
    unhashed = sorted(p.name for p in pins.values() if not p.hashes)
    assert not unhashed, f"entries without hashes in {lock}: {unhashed}"
    assert canonicalize_name(PROJECT) not in pins, f"{lock} must not pin the project itself"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_direct_entries_are_exactly_pyprojects(lock):
    """A dependency dropped from pyproject.toml without re-locking leaves a stale direct entry."""
    path, requirements = LOCKS[lock]
    pins = parse_lock(path.read_text())
    direct = {p.name for p in pins.values() if f"{PROJECT} (pyproject.toml)" in p.via}
    assert direct == {canonicalize_name(r.name) for r in requirements}, "run scripts/lock"


def test_extras_of_dependencies_are_locked(runtime_pins):
    """uvicorn[standard] brings uvloop, httptools, watchfiles, websockets: they are locked too."""
    for req in RUNTIME_REQS:
        for extra in sorted(req.extras):
            dist = metadata.distribution(req.name)
            for line in dist.requires or []:
                sub = Requirement(line)
                if sub.marker is None or not sub.marker.evaluate({"extra": extra}):
                    continue
                assert canonicalize_name(sub.name) in runtime_pins, (
                    f"{sub.name} (from {req.name}[{extra}]) is not in requirements.lock"
                )


def test_runtime_lock_is_a_subset_of_the_dev_lock(dev_pins, runtime_pins):
    """The image runs the versions CI tested."""
    for name, pin in runtime_pins.items():
        assert name in dev_pins, f"{name} is in requirements.lock only"
        assert dev_pins[name].version == pin.version, (
            f"{name}: requirements.lock has {pin.version}, requirements-dev.lock {dev_pins[name].version}"
        )
        assert set(pin.hashes) <= set(dev_pins[name].hashes), f"{name}: hashes differ between the locks"
    for name in ("pytest", "hypothesis", "matplotlib"):  # test/bench tools stay out of the image
        assert name not in runtime_pins, f"{name} is in requirements.lock"


# (b) the running environment is the lock


def test_installed_versions_match_the_lock(dev_pins):
    wrong = []
    for name, pin in sorted(dev_pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}=={pin.version} is not installed")
            continue
        if installed != pin.version:
            wrong.append(f"{name}: {installed} installed, {pin.version} locked")
    assert not wrong, "environment differs from requirements-dev.lock (rebuild it with scripts/bootstrap):\n" + "\n".join(wrong)


def test_declared_dependencies_are_installed_at_the_locked_version(dev_pins):
    for req in ALL_REQS:
        name = canonicalize_name(req.name)
        assert metadata.version(name) == dev_pins[name].version, name


# (c) the installers go through the lock in --require-hashes mode


def pip_installs(text: str) -> list[list[str]]:
    """The argument lists (after `install`) of every `pip install` in a shell script or Dockerfile."""
    commands = []
    for line in logical_lines(text):
        if "install" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()"):  # end of one simple command
                for i in range(len(words) - 1):
                    if re.search(r"(^|/)pip3?$", words[i]) and words[i + 1] == "install":
                        commands.append(words[i + 2 :])
                        break
                words = []
            else:
                words.append(token)
    return commands


def option_value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def shell_value(text: str, word: str) -> str:
    """Expands a `$var` / `"$var"` argument from a `var=...` assignment in the script."""
    m = re.fullmatch(r"\$\{?(\w+)\}?", word)
    if not m:
        return word
    assignment = re.search(rf"^\s*{m.group(1)}=(.+)$", text, re.M)
    assert assignment, f"no assignment of ${m.group(1)}"
    return shlex.split(assignment.group(1))[0]


def check_installs(text: str, lock_name: str, where: str) -> None:
    installs = pip_installs(text)
    assert installs, f"{where} runs no pip install"
    hashed = [i for i, args in enumerate(installs) if "--require-hashes" in args]
    assert hashed, f"{where} never installs with --require-hashes"
    for i in hashed:
        requirement_file = option_value(installs[i], "-r", "--requirement")
        assert requirement_file, f"{where}: --require-hashes install without -r"
        assert Path(shell_value(text, requirement_file)).name == lock_name, (
            f"{where} installs {requirement_file} instead of {lock_name}"
        )
    for i, args in enumerate(installs):
        if i in hashed:
            continue
        # anything else may add only the project, and nothing it would pull in
        assert "--no-deps" in args, f"{where}: `pip install {' '.join(args)}` bypasses the lock"
        assert i > min(hashed), f"{where} installs the project before the locked dependencies"


def test_bootstrap_installs_the_dev_lock_with_hashes():
    text = (ROOT / "scripts" / "bootstrap").read_text()
    check_installs(text, DEV_LOCK.name, "scripts/bootstrap")
    installs = pip_installs(text)
    assert any("--no-deps" in args and "-e" in args for args in installs), "project not installed editable"
    # the venv is keyed by the locks, so a lock change rebuilds it
    key = next(line for line in text.splitlines() if line.startswith("key="))
    assert "pyproject.toml" in key and "$lock" in key and "requirements.lock" in key


def test_dockerfile_installs_the_runtime_lock_with_hashes():
    text = (ROOT / "Dockerfile").read_text()
    check_installs(text, RUNTIME_LOCK.name, "Dockerfile")
    assert re.search(r"^COPY\s+.*\brequirements\.lock\b", text, re.M), "Dockerfile does not copy requirements.lock"
    assert RUNTIME_LOCK.name not in (ROOT / ".dockerignore").read_text().split()


# the checks above can fail


def test_checks_catch_broken_locks():
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock("fastapi>=0.110 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="malformed"):
        parse_lock("fastapi==0.1 \\\n    --hash=sha256:abc\n")
    assert parse_lock("fastapi==0.1\n")["fastapi"].hashes == []
    with pytest.raises(AssertionError, match="bypasses the lock"):
        check_installs("pip install --require-hashes -r requirements.lock\npip install .\n", "requirements.lock", "x")
    with pytest.raises(AssertionError, match="instead of"):
        check_installs("pip install --require-hashes -r other.txt\n", "requirements.lock", "x")
    with pytest.raises(AssertionError, match="never installs"):
        check_installs("RUN pip install -r requirements.lock\n", "requirements.lock", "x")
    with pytest.raises(AssertionError, match="before the locked"):
        check_installs(
            "pip install --no-deps .\npip install --require-hashes -r requirements.lock\n", "requirements.lock", "x"
        )
    check_installs(
        'lock="$root/requirements.lock"\n"$venv/bin/python" -m pip install --quiet --require-hashes -r "$lock" >&2\n'
        "RUN /v/bin/pip install --no-deps . \\\n && pip uninstall --yes pip\n",
        "requirements.lock",
        "x",
    )
