"""The tiny-job and 1 MiB-argument workloads against upstream dispy 4.15.2, on loopback, for comparison.

``python bench/bench_upstream.py [--jobs N] [--quick]`` creates ``bench/.upstream-venv`` (once) with
``pip install dispy==4.15.2 psutil``, starts upstream ``dispynode.py -i 127.0.0.1`` and runs
``bench/_upstream_client.py`` in that venv. Both upstream processes import ``_loopback_guard`` first, since
upstream dispy broadcasts UDP pings. If upstream cannot be installed or run here, it says so and exits 0.
Results go to ``bench/results/upstream.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".upstream-venv"
UPSTREAM = "dispy==4.15.2"
SECRET = "bench-secret"
NODE_CPUS = 2
READY_TIMEOUT = 60.0


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> str | None:
    """Create the upstream venv if needed; None when ready, else why not."""
    python = venv_python()
    marker = VENV / ".installed"
    if marker.exists() and python.exists():
        return None
    if not python.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print(f"pip install {UPSTREAM} psutil ...", flush=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", UPSTREAM,
                           "psutil"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return f"pip install {UPSTREAM} failed on Python {sys.version.split()[0]}:\n{proc.stdout}{proc.stderr}"
    marker.write_text(UPSTREAM + "\n")
    return None


def free_base_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP whose + 1 is free too (client: base, node: base + 1)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if not 1024 < base < 65000:
            continue
        try:
            for port in (base, base + 1):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port pair on 127.0.0.1")


def guarded(code: str) -> list[str]:
    """A ``python -c`` command line for the upstream venv that imports the loopback guard first."""
    prelude = f"import sys; sys.path.insert(0, {str(HERE)!r}); import _loopback_guard; "
    return [str(venv_python()), "-I", "-u", "-c", prelude + code]


def start_upstream_node(base: int, prefix: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Upstream dispynode.py on 127.0.0.1 with ``NODE_CPUS`` CPUs; waits until it serves."""
    prefix.mkdir(parents=True, exist_ok=True)
    script = VENV / "bin" / "dispynode.py"
    argv = ["dispynode.py", "-c", str(NODE_CPUS), "-i", "127.0.0.1", "-p", str(base), "-s", SECRET, "--daemon",
            "--clean", "--dest_path_prefix", str(prefix)]
    code = f"import runpy; sys.argv = {argv!r}; runpy.run_path({str(script)!r}, run_name='__main__')"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(guarded(code), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=prefix, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream dispynode exited with {proc.returncode}:\n{_tail(log_path)}")
        if "serving" in log_path.read_text(errors="replace"):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", base + 1)) == 0:
                    return proc
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"upstream dispynode did not start within {READY_TIMEOUT} s:\n{_tail(log_path)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the node, then SIGKILL its process group (it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # job processes the node may have left (its own group only)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Install if needed, then each phase against a fresh node; merged measurements, ``errors``, or ``error``."""
    try:
        problem = ensure_venv()
    except (OSError, subprocess.SubprocessError) as exc:
        problem = f"could not create {VENV}: {exc!r}"
    if problem:
        return {"error": problem}
    merged: dict[str, Any] = {"errors": []}
    for phase, count in (("tiny", args.jobs), ("latency", args.latency_jobs), ("big", args.big_jobs)):
        print(f"phase {phase}: {count} jobs ...", flush=True)
        result = run_phase(phase, count, args.phase_timeout)
        if "error" in result:
            return result
        merged["errors"] += result.pop("errors", [])
        merged.update(result)
    return merged


def run_phase(phase: str, count: int, timeout: float) -> dict[str, Any]:
    """One phase of ``_upstream_client.py`` against its own upstream node (stopped and cleaned after)."""
    prefix = Path(tempfile.mkdtemp(prefix="dispy-upstream-"))
    log_path = prefix / "dispynode.log"
    node: subprocess.Popen[bytes] | None = None
    try:
        base = free_base_port()
        node = start_upstream_node(base, prefix / "node", log_path)
        client_argv = ["_upstream_client.py", str(base), SECRET, phase, str(count), str(node.pid), str(timeout)]
        client_code = (f"import runpy; sys.argv = {client_argv!r}; "
                       f"runpy.run_path({str(HERE / '_upstream_client.py')!r}, run_name='__main__')")
        try:
            proc = subprocess.run(guarded(client_code), capture_output=True, text=True, timeout=timeout + 60,
                                  cwd=prefix, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return {"errors": [f"{phase}: upstream client killed after {timeout + 60:.0f} s: {exc.stderr!r:.2000}"]}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            return {"error": f"upstream client exited with {proc.returncode}",
                    "stderr": (proc.stdout + proc.stderr)[-3000:], "node_log": _tail(log_path)}
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        if proc.returncode != 0:
            result["errors"].append(f"{phase}: upstream client exited with {proc.returncode}; node log:\n"
                                    f"{_tail(log_path, 1500)}")
        return result
    except (RuntimeError, OSError) as exc:
        return {"error": str(exc)}
    finally:
        if node is not None:
            stop(node)
        shutil.rmtree(prefix, ignore_errors=True)


ROWS = [("tiny jobs throughput (jobs/s)", "throughput_jobs_s", "{:.0f}"),
        ("latency median (ms)", "latency_median_ms", "{:.3f}"),
        ("latency p99 (ms)", "latency_p99_ms", "{:.3f}"),
        ("latency min (ms)", "latency_min_ms", "{:.3f}"),
        ("1 MiB args (MiB/s)", "big_mib_s", "{:.1f}"),
        ("client CPU per job (ms)", "client_cpu_ms_per_job", "{:.3f}"),
        ("node process CPU per job (ms)", "node_cpu_ms_per_job", "{:.3f}"),
        ("workers' CPU per job (ms)", "workers_cpu_ms_per_job", "{:.3f}")]


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--big-jobs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="50 tiny jobs, 20 sequential, 5 x 1 MiB")
    parser.add_argument("--phase-timeout", type=float, default=120.0, help="seconds one phase may take")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "upstream.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # so that ``finally`` stops the node
    if args.quick:
        args.jobs, args.latency_jobs, args.big_jobs = 50, 20, 5
    print(f"upstream {UPSTREAM} on Python {sys.version.split()[0]}, node with {NODE_CPUS} CPUs on 127.0.0.1")
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"upstream": UPSTREAM, "python": sys.version.split()[0], "jobs": args.jobs,
                                     "latency_jobs": args.latency_jobs, "big_jobs": args.big_jobs,
                                     "result": result}, indent=2) + "\n")
    if "error" in result:
        print(f"UPSTREAM DISPY COULD NOT RUN on Python {sys.version.split()[0]}: {result['error']}")
        for key in ("stderr", "node_log"):
            if result.get(key):
                print(f"--- {key} ---\n{result[key]}")
        return 0
    width = max(len(label) for label, _, _ in ROWS)
    print(f"\n{'metric'.ljust(width)}  upstream dispy 4.15.2")
    for label, key, fmt in ROWS:
        value = result.get(key)
        print(f"{label.ljust(width)}  {'-' if value is None else fmt.format(value):>21}")
    for error in result.get("errors", []):
        print(f"UPSTREAM ERROR (Python {sys.version.split()[0]}): {error}")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
