"""py-spy under the benchmark: record a server, then say where its CPU went.

`py-spy record --native --function --format raw` gives one line per distinct stack
("frame;frame;... count"). The summary splits samples by thread (the event loop,
where every chunk is relayed, vs the sync threads that run ORM work) and drops
the idle ones (the loop in epoll, workers waiting for a job or for the GIL). It
then charges each busy sample to the innermost Python function on its stack, so
C time (a socket write, orjson, httptools) lands on the Python code that called
it, and groups those functions by package.
"""

import signal
import subprocess
from collections import Counter
from pathlib import Path

LOOP_MARKERS = ("Runner.run (", "run_until_complete (")
LOOP_IDLE = ("epoll_pwait (", "epoll_wait (")
WORKER_IDLE = (
    "_queue_SimpleQueue_get",
    "take_gil",
    "lock_PyThread_acquire_lock",
    "acquire_timed",
    "PyThread_acquire_lock",
)
PACKAGES = {
    "core": "azure-core",
    "agents": "azure-ai-agents",
    "aiohttp": "aiohttp",
    "django": "django",
    "asgiref": "asgiref",
    "uvicorn": "uvicorn",
    "starlette": "starlette",
    "fastapi": "fastapi",
    "pydantic": "pydantic",
    "psycopg": "psycopg",
    "psycopg_pool": "psycopg",
    "asyncio": "asyncio (stdlib)",
    "json": "json (stdlib)",
}


def start(pid: int, raw: Path, log: Path, preexec_fn) -> subprocess.Popen[bytes]:
    """Starts sampling; `stop()` ends it. --native needs the process paused per
    sample, so the profiled run is never the measured one."""
    argv = [str(Path(__file__).resolve().parent.parent / ".venv/bin/py-spy")]
    if not Path(argv[0]).exists():
        argv = ["py-spy"]
    argv += ["record", "--pid", str(pid), "--duration", "600", "--rate", "100"]
    argv += ["--native", "--function", "--format", "raw", "--output", str(raw)]
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
        )


def stop(profiler: subprocess.Popen[bytes]) -> None:
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()


def _location(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")")


def _is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen" in frame


def _package(frame: str) -> str:
    path = _location(frame)
    head = path.split("/", 1)[0]
    if head in ("chat", "chatsite"):
        return path.split(":", 1)[0]
    if head == "reference_relay.py" or path.startswith("bench/"):
        return "reference_relay.py"
    return PACKAGES.get(head, head.split(":", 1)[0])


def summarize(raw: Path, title: str, top: int = 25) -> tuple[dict, str]:
    loop_busy: Counter[str] = Counter()
    loop_packages: Counter[str] = Counter()
    loop_inclusive: Counter[str] = Counter()
    worker_busy: Counter[str] = Counter()
    native_leaves: Counter[str] = Counter()
    counts = Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            f for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        python = [f for f in frames if _is_python(f)]
        owner = python[-1] if python else frames[-1]
        if any(f.startswith(LOOP_MARKERS) for f in frames):
            if frames[-1].startswith(LOOP_IDLE):
                counts["loop idle"] += n
                continue
            counts["loop busy"] += n
            loop_busy[owner] += n
            loop_packages[_package(owner)] += n
            native_leaves[frames[-1]] += n
            for frame in set(python):
                loop_inclusive[frame] += n
        elif any(marker in stack for marker in WORKER_IDLE):
            counts["workers idle"] += n
        else:
            counts["workers busy"] += n
            worker_busy[owner] += n
    busy = counts["loop busy"] or 1

    def share(n: int, total: int = busy) -> str:
        return f"{100 * n / total:6.1f}"

    lines = [
        f"py-spy --native, {title}",
        f"event loop thread: {counts['loop busy']} busy samples, "
        f"{counts['loop idle']} idle; sync threads: {counts['workers busy']} busy "
        f"(samples at 100 Hz; % below are of the loop's busy samples)",
        "",
        "loop, self time by package (innermost Python frame, C callees included)",
    ]
    lines += [f"{share(n)}   {name}" for name, n in loop_packages.most_common(top)]
    lines += ["", "loop, self time by function"]
    lines += [f"{share(n)}   {name}" for name, n in loop_busy.most_common(top)]
    lines += ["", "loop, inclusive time by function"]
    lines += [
        f"{share(n)}   {name}" for name, n in loop_inclusive.most_common(top + 15)
    ]
    lines += ["", "loop, native leaf frames"]
    lines += [f"{share(n)}   {name}" for name, n in native_leaves.most_common(12)]
    worker_total = counts["workers busy"] or 1
    lines += ["", "sync threads, self time by function (% of their busy samples)"]
    lines += [
        f"{share(n, worker_total)}   {name}" for name, n in worker_busy.most_common(15)
    ]
    data = {
        "samples": dict(counts),
        "loop_packages_pct": {
            name: round(100 * n / busy, 1) for name, n in loop_packages.most_common(top)
        },
        "loop_self_pct": [
            [name, round(100 * n / busy, 1)] for name, n in loop_busy.most_common(top)
        ],
    }
    return data, "\n".join(lines) + "\n"
