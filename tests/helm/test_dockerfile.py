"""The container image, checked without a Docker engine: the Dockerfile and .dockerignore.

The Dockerfile is parsed (continuations, ARG defaults) and the build context is computed from
.dockerignore with Docker's rules (last matching pattern wins, a pattern matching a parent
directory matches everything below it); the package is then built from exactly that context,
as the image's `pip install .` would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to (-1 before the first FROM)


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    stage = -1
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
        logical = ""
    assert not logical, "the Dockerfile ends inside a continued line"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in INSTRUCTIONS)


def final(keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == keyword and i.stage == FINAL_STAGE]


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for i in INSTRUCTIONS:
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def expand(value: str) -> str:
    args = arg_defaults()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


# --- .dockerignore -----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_patterns() -> list[tuple[bool, str, re.Pattern[str]]]:
    """(exclusion, pattern, regex) per .dockerignore line, in order."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negated, pattern, _pattern_regex(pattern)))
    return patterns


def ignored(rel: str, patterns: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, _, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            result = not negated
    return result


def build_context() -> list[str]:
    """The files `docker build .` would send, as paths relative to the repository."""
    patterns = ignore_patterns()
    reincluded = [p for negated, p, _ in patterns if negated]
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune excluded directories that no ! pattern reaches into (.git, .venv, ...).
        dirnames[:] = [
            d
            for d in dirnames
            if not ignored(rel_dir + d, patterns) or any(p.startswith(rel_dir + d + "/") for p in reincluded)
        ]
        files += [rel_dir + f for f in filenames if not ignored(rel_dir + f, patterns)]
    return sorted(files)


CONTEXT = build_context()


# --- the Dockerfile ----------------------------------------------------------------------


def test_runs_as_a_non_root_user() -> None:
    users = final("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"


def test_entrypoint_is_meshgate_serve() -> None:
    (entrypoint,) = final("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["meshgate", "serve"]  # exec form: signals reach the gateway


def test_healthcheck_asks_readyz_over_plain_http() -> None:
    """With TLS on the gRPC port wants a client certificate: the healthcheck reads /readyz instead."""
    (healthcheck,) = final("HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "grpc" not in argv[-1]
    assert "--timeout=" in options
    env = " ".join(i.args for i in final("ENV"))
    url = re.search(r"MESHGATE_HEALTHCHECK_URL=(\S+)", env)
    assert url is not None and url.group(1) == "http://127.0.0.1:9464/readyz"
    exposed = " ".join(i.args for i in final("EXPOSE")).split()
    assert "9464" in exposed  # the default metrics port the URL names


def test_healthcheck_command_reports_the_gateway_readiness(tmp_path: Path) -> None:
    """The HEALTHCHECK's own command, run against a stand-in /readyz: exit 0 on 200, not 0 on 503."""
    import http.server
    import threading

    (healthcheck,) = final("HEALTHCHECK")
    argv = json.loads(healthcheck.args.partition("CMD ")[2])
    answers = iter([200, 503])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(next(answers))
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "MESHGATE_HEALTHCHECK_URL": f"http://127.0.0.1:{server.server_address[1]}/readyz"}
        command = [sys.executable, *argv[1:]]
        assert subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode == 0
        assert subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_base_images_have_explicit_tags() -> None:
    from_lines = [i for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(from_lines) >= 2, "expected a build stage and a slim runtime stage"
    for instruction in from_lines:
        image = expand(shlex.split(instruction.args)[0])
        assert "$" not in image, f"unresolved ARG in FROM {instruction.args}"
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, f"FROM {image} has no tag"
        assert tag != "latest"
        assert "slim" in tag


def test_base_images_are_pinned_by_digest() -> None:
    """A tag moves; a digest names one image: a rebuild gets the same Python and Debian."""
    for instruction in (i for i in INSTRUCTIONS if i.keyword == "FROM"):
        image = expand(shlex.split(instruction.args)[0])
        assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image), f"FROM {image} is not pinned by digest"


# --- the dependencies: their own layer, from a lock with hashes ---------------------------

LOCK = ROOT / "requirements.lock"


def build_stage() -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == 0]


def test_dependencies_are_installed_in_their_own_layer_before_the_sources() -> None:
    """A change of the sources must not reinstall every dependency: the layer that installs them
    comes from the lock alone, before any source is copied."""
    stage = build_stage()
    installs = [n for n, i in enumerate(stage) if i.keyword == "RUN" and "-r requirements.lock" in i.args]
    assert len(installs) == 1, "the build stage installs requirements.lock in one RUN"
    (install,) = installs
    copies_before = [shlex.split(i.args) for i in stage[:install] if i.keyword == "COPY"]
    assert copies_before == [["requirements.lock", "./"]], f"only the lock is copied before it: {copies_before}"
    assert "--require-hashes" in stage[install].args
    copies_after = [i for i in stage[install:] if i.keyword == "COPY"]
    assert {"pyproject.toml", "meshgate", "gateway"} <= {
        w.rstrip("/") for i in copies_after for w in shlex.split(i.args)[:-1]
    }
    # meshgate itself adds nothing unlocked: no dependencies, no build isolation, no index.
    (package,) = [i for i in stage[install + 1 :] if i.keyword == "RUN" and "pip install" in i.args]
    for flag in ("--no-deps", "--no-build-isolation", "--no-index"):
        assert flag in package.args, f"meshgate's own install lacks {flag}: {package.args}"
    assert "pip check" in package.args


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """normalized name -> (version, hashes) of requirements.lock."""
    from packaging.utils import canonicalize_name

    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        assert sep, f"requirements.lock: {spec} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{spec} has no sha256 hash"
        assert len(hashes) == len(options), f"{spec}: options other than hashes: {options}"
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def declared_requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    return [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]


def test_the_lock_pins_every_dependency_within_its_specifier() -> None:
    """pyproject.toml's dependencies and build requirements, each pinned, in range, with hashes.
    A dependency added or narrowed without `python scripts/lock_image.py` fails here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = lock_entries()
    for text in declared_requirements():
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in requirements.lock: run python scripts/lock_image.py"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), f"requirements.lock pins {name}=={version}: {req}"


def test_the_lock_holds_what_the_dependencies_need() -> None:
    """Closed under dependencies (pip installs it with --no-deps): followed through the metadata of
    the packages installed here, with the markers of the image's Python (3.12 on Linux)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = lock_entries()
    environment = {"python_version": "3.12", "python_full_version": "3.12.14", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
    pending = [Requirement(text) for text in declared_requirements()]
    seen: set[str] = set()
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(environment)):
            continue
        seen.add(name)
        assert name in locked, f"{name} (needed through {req}) is not in requirements.lock"
        try:
            pending += [Requirement(t) for t in requires(req.name) or []]
        except PackageNotFoundError:
            continue  # not installed here (a build requirement): its own needs are not known here
    assert {"grpcio", "nats-py", "protobuf", "setuptools"} <= seen


def test_no_latest_anywhere() -> None:
    assert ":latest" not in DOCKERFILE.read_text()


def test_python_does_not_write_into_a_read_only_root() -> None:
    env = " ".join(i.args for i in final("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def copy_sources() -> list[str]:
    sources = []
    for i in INSTRUCTIONS:
        if i.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(i.args) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(i.args)):
            continue
        sources += [w.rstrip("/") for w in words[:-1]]
    return sources


def test_copies_only_what_dockerignore_allows() -> None:
    sources = copy_sources()
    assert sources
    for source in sources:
        assert any(f == source or f.startswith(source + "/") for f in CONTEXT), (
            f"COPY {source}: .dockerignore keeps it out of the build context"
        )
    # Every top-level entry of the context is copied: nothing is sent for nothing.
    top = {f.split("/")[0] for f in CONTEXT}
    assert top == set(sources)


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-directory mapping: subpackage -> the top-level folder it is built from."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    return dict(setuptools["package-dir"])


def test_every_mapped_folder_is_copied() -> None:
    dirs = package_dirs()
    assert "meshgate.gateway" in dirs, "pyproject.toml maps the architecture folders into meshgate"
    for package, folder in dirs.items():
        assert Path(folder).parts[0] in copy_sources(), f"{package} ({folder}/) is not copied"


def test_context_leaves_out_local_state() -> None:
    assert "gateway/_server.py" in CONTEXT
    assert "proto/meshgate/v1/gateway_pb2.py" in CONTEXT
    assert "config/mesh.schema.json" in CONTEXT
    for f in CONTEXT:
        top = f.split("/")[0]
        assert top not in (".git", ".venv", ".venv-ci", "tests", "helm", ".meshgate", "docs"), f
        assert "__pycache__" not in f
        assert ".egg-info" not in f


def test_the_context_builds_the_package(tmp_path: Path) -> None:
    """What the image's `pip install .` gets: a wheel with the whole package and its data."""
    context = tmp_path / "context"
    for f in CONTEXT:
        src, dst = ROOT / f, context / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path / "dist"), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("meshgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for needed in (
        "meshgate/cli/_serve.py",
        "meshgate/gateway/_server.py",
        "meshgate/v1/gateway_pb2.py",
        "meshgate/config/mesh.schema.json",
        "meshgate/replicator/__init__.py",
        "meshgate/brokers/__init__.py",
        "meshgate/router/__init__.py",
        "meshgate/observability/_tracing.py",
        "meshgate/topics.py",
        "meshgate/testing/__init__.py",
        "meshgate/bench/mesh_bench.py",
    ):
        assert needed in names, needed
    assert "meshgate = meshgate.cli:main" in entry_points


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("gateway/_server.py", False),
        ("gateway/__pycache__/_server.cpython-311.pyc", True),
        ("tests/conftest.py", True),
        (".git/HEAD", True),
        ("pyproject.toml", False),
        ("meshgate.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_matcher(path: str, expected: bool) -> None:
    assert ignored(path, ignore_patterns()) is expected
