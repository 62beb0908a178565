"""The deployment artefacts, checked without Docker or Azure.

Dockerfile, .dockerignore, azure.yaml and infra/ (Bicep) are linted and cross-checked,
and the image's command is run from a fresh venv the way the container runs it.

hadolint and shellcheck come from requirements-dev.txt. checkov pins packaging<24,
which pytest cannot use, so it lives in its own venv (.venv/tools, built by make);
its Python also parses the Bicep (pycep). $CHECKOV_BIN, $HADOLINT_BIN and
$SHELLCHECK_BIN override where the tools are looked for.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.live import free_port
from testing.waiting import wait_until

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = ROOT / "Dockerfile"
TOOLS_BIN = ROOT / ".venv" / "tools" / "bin"

# Keeps checkov off the network: no update check, no policy download.
CHECKOV_ENV = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}

# Run inside checkov's venv: prints, per Bicep file, its parameters and module calls.
BICEP_OUTLINE = """
import json, sys
from pycep import BicepParser

def generated(param):
    return any(
        d["type"] == "metadata"
        and (d.get("argument") or {}).get("azd", {}).get("type") == "generate"
        for d in param["decorators"]
    )

outline = {}
for path in sys.argv[1:]:
    try:
        tree = BicepParser().parse(text=open(path, encoding="utf-8").read())
    except Exception as exc:
        outline[path] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    modules = {}
    for name, module in (tree.get("modules") or {}).items():
        config = module["config"]
        config = config.get("config", config)  # `module x '...' = if (...) {...}`
        modules[name] = {
            "path": module["detail"]["path"] if module["type"] == "local" else None,
            "params": sorted(config.get("params") or {}),
        }
    outline[path] = {
        "parameters": {
            name: {"default": p.get("default"), "generated": generated(p)}
            for name, p in (tree.get("parameters") or {}).items()
        },
        "variables": {
            name: v["value"] for name, v in (tree.get("variables") or {}).items()
        },
        "modules": modules,
    }
print(json.dumps(outline, default=str))
"""


def find_tool(name: str) -> Path:
    """The tool's executable; a missing tool fails under CI and skips elsewhere."""
    override = os.environ.get(f"{name.upper()}_BIN")
    candidates = [Path(override)] if override else []
    candidates += [Path(sys.prefix) / "bin" / name, TOOLS_BIN / name]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} is not installed: run `make install-dev`."
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_checkov(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(find_tool("checkov")),
            *args,
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        cwd=ROOT,
        env={**os.environ, **CHECKOV_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout)
    assert isinstance(report, dict), f"one framework, one report: {result.stdout[:500]}"
    return report


def assert_checkov_clean(report: dict[str, Any]) -> None:
    summary = report["summary"]
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in results["skipped_checks"]
        if c["check_result"].get("suppress_comment", "No comment provided")
        in ("", "No comment provided")
    ]
    assert not unexplained, f"checkov:skip needs a reason: {unexplained}"


@cache
def bicep_outline() -> dict[str, Any]:
    """Parameters, variables and module calls of every Bicep file, keyed by path."""
    checkov = find_tool("checkov")
    python = checkov.with_name("python")
    if not python.exists():  # checkov installed by other means: use its interpreter
        python = Path(checkov.read_text().splitlines()[0].removeprefix("#!").strip())
    files = sorted(str(p.relative_to(ROOT)) for p in INFRA.rglob("*.bicep"))
    result = subprocess.run(
        [python, "-c", BICEP_OUTLINE, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


def required(parameters: dict[str, Any]) -> set[str]:
    return {name for name, p in parameters.items() if p["default"] is None}


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def image_command() -> list[str]:
    (cmd,) = instructions(dockerfile_stages()[-1], "CMD")
    return json.loads(cmd)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- Linters --------------------------------------------------------------------------


def test_it_passes_checkov_on_the_bicep() -> None:
    report = run_checkov("-d", "infra", "--framework", "bicep")
    assert_checkov_clean(report)
    assert report["summary"]["resource_count"] > 0


def test_it_passes_checkov_on_the_dockerfile() -> None:
    assert_checkov_clean(run_checkov("-f", "Dockerfile", "--framework", "dockerfile"))


def test_it_passes_hadolint() -> None:
    result = subprocess.run(
        [str(find_tool("hadolint")), "--no-color", "-f", "json", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == []
    assert result.returncode == 0


def test_it_passes_shellcheck_on_the_azd_hooks() -> None:
    hooks = sorted(str(p.relative_to(ROOT)) for p in (INFRA / "hooks").glob("*.sh"))
    assert hooks
    result = subprocess.run(
        [str(find_tool("shellcheck")), *hooks],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


# --- Bicep, parameters and azure.yaml -------------------------------------------------


def test_it_parses_every_bicep_file() -> None:
    errors = {path: o["error"] for path, o in bicep_outline().items() if "error" in o}
    assert not errors
    assert "infra/main.bicep" in bicep_outline()


def test_it_provides_every_required_main_parameter() -> None:
    parameters = bicep_outline()["infra/main.bicep"]["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(parameters), "main.parameters.json names unknown params"
    # azd fills `generate` params itself and keeps the value in the environment.
    generated = {name for name, p in parameters.items() if p["generated"]}
    assert required(parameters) - generated <= set(given)
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["location"]["value"] == "${AZURE_LOCATION}"


def test_it_passes_modules_only_the_params_they_declare() -> None:
    outline = bicep_outline()
    for path, file in outline.items():
        for name, module in file["modules"].items():
            target = (ROOT / path).parent / module["path"]
            assert target.is_file(), f"{path}: module {name} -> {module['path']}"
            declared = outline[str(target.relative_to(ROOT))]["parameters"]
            passed = set(module["params"])
            assert passed <= set(declared), f"{path}: {name} passes unknown params"
            assert required(declared) <= passed, f"{path}: {name} misses params"


def test_it_names_existing_paths_in_azure_yaml() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert (
        ROOT / config["infra"]["path"] / f"{config['infra']['module']}.bicep"
    ).is_file()
    assert set(config["services"]) == {"web"}
    web = config["services"]["web"]
    assert web["host"] == "containerapp"
    project = ROOT / web["project"]
    assert (project / web["docker"]["path"]).resolve() == DOCKERFILE
    assert (project / web["docker"]["context"]).resolve() == ROOT
    for hook in web.get("hooks", {}).values():
        script = project / hook["posix"]["run"]
        assert script.is_file(), script
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_it_stops_uvicorn_before_container_apps_kills_the_replica() -> None:
    command = image_command()
    graceful = int(option(command, "--timeout-graceful-shutdown"))
    parameters = bicep_outline()["infra/main.bicep"]["parameters"]
    grace_period = parameters["terminationGracePeriodSeconds"]["default"]
    web = bicep_outline()["infra/modules/web.bicep"]
    drain = web["variables"]["chatDrainSeconds"]
    # SIGTERM, then the app ends open replies at `drain`, uvicorn gives up at
    # `graceful`, the lifespan handler stores what is left, and only then SIGKILL.
    assert 0 < drain <= graceful - 20
    assert graceful <= grace_period - 20
    assert int(option(command, "--port")) == web["variables"]["port"]


# --- The image's command, run without Docker ------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: patterns are anchored at the root, the last match wins, and a
    match on a directory covers everything below it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = re.escape(pattern.removeprefix("!").strip("/"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def copy_build_context(destination: Path) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for directory, subdirectories, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT)
        subdirectories[:] = [
            d
            for d in subdirectories
            if not dockerignore_excludes((relative / d).as_posix(), patterns)
        ]
        for file in files:
            source = relative / file
            if not dockerignore_excludes(source.as_posix(), patterns):
                (destination / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, destination / source)


def runtime_environment(venv: Path) -> dict[str, str]:
    """The final stage's ENV, with PATH pointing at the test venv."""
    environment: dict[str, str] = {}
    for arguments in instructions(dockerfile_stages()[-1], "ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            environment[key] = value
    environment["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    return environment


def get(url: str) -> tuple[int, bytes]:
    # Host: localhost, as the Container Apps probes send it.
    request = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.live
@pytest.mark.timeout(900)
def test_it_serves_health_and_static_files_the_way_the_image_runs(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    venv = tmp_path / "venv"
    copy_build_context(app)

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    pip = subprocess.run(
        [*install, "-r", "requirements.txt"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert pip.returncode == 0, pip.stderr
    print(f"venv from requirements.txt: {time.monotonic() - started:.1f}s")

    build_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    (collectstatic,) = [
        run
        for run in instructions(dockerfile_stages()[0], "RUN")
        if "collectstatic" in run
    ]
    subprocess.run(["sh", "-c", collectstatic], cwd=app, env=build_env, check=True)

    env = runtime_environment(venv) | {
        "HOME": str(tmp_path),
        "DJANGO_SECRET_KEY": "test-deploy-secret-key-0123456789-abcdefghijklmnop",
        "DJANGO_ALLOWED_HOSTS": "ca-web-test.example.azurecontainerapps.io,localhost",
        "CSRF_TRUSTED_ORIGINS": "https://ca-web-test.example.azurecontainerapps.io",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    # What the migrate job runs once per deployment.
    migrate = ["python", "manage.py", "migrate", "--noinput", "-v", "0"]
    subprocess.run(migrate, cwd=app, env=env, check=True, timeout=120)

    port = free_port()
    command = image_command()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"

    def answer() -> tuple[int, bytes] | None:
        assert server.poll() is None, log_path.read_text()
        try:
            return get(f"{base}/api/health")
        except OSError:
            return None

    try:
        status, body = wait_until(answer, timeout=30, interval=0.2)
        assert status == 200, body
        health = json.loads(body)
        assert health["status"] == "healthy"
        assert health["service"] == "chatsite"

        status, body = get(f"{base}/api/health/ready")
        assert status == 200, body

        manifest = json.loads((app / "staticfiles" / "staticfiles.json").read_text())
        hashed = manifest["paths"]["admin/css/base.css"]
        assert hashed != "admin/css/base.css"
        status, body = get(f"{base}/static/{hashed}")
        assert status == 200
        assert body == (app / "staticfiles" / hashed).read_bytes()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            pytest.fail(f"uvicorn ignored SIGTERM:\n{log_path.read_text()}")

    # uvicorn re-raises SIGTERM after its graceful shutdown.
    assert server.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Application shutdown complete" in log_path.read_text()
