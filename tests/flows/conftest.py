"""A real Prefect server and a real `neuralign serve` process, shared by the tests of this folder.

Both run as subprocesses on a free loopback port with their own PREFECT_HOME and work folder under a
temporary directory, each in its own process group so that teardown (also after a failure) stops
exactly them and their children.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOYMENTS = ("neural-fit/default", "neural-fit/majajhong2015", "train-rule/default", "compare/default")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within grace_s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)
    except ProcessLookupError:
        pass


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


class Services:
    """Handles on the running server and serve process, and helpers to run deployments against them."""

    def __init__(self, base: Path):
        self.base = base
        self.work = base / "work"
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_HOME": str(base / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
            "NEURALIGN_WORK": str(self.work),
            "OMP_NUM_THREADS": "1",
        }
        self.env.pop("NEURALIGN_DASK_ADDRESS", None)
        self.processes: list[subprocess.Popen] = []

    def start(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.base / log_name, "wb")
        process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(process)
        return process

    def log_tail(self, log_name: str, n: int = 40) -> str:
        lines = (self.base / log_name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_for(self, condition, timeout_s: float, what: str, process: subprocess.Popen, log_name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if process.poll() is not None:
                raise RuntimeError(f"{what}: process exited ({process.returncode})\n{self.log_tail(log_name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout_s}s\n{self.log_tail(log_name)}")
            time.sleep(0.5)

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)

    def deployments_exist(self) -> bool:
        try:
            with self.client() as client:
                for name in DEPLOYMENTS:
                    client.read_deployment_by_name(name)
            return True
        except Exception:  # noqa: BLE001 - not registered yet (ObjectNotFound) or server busy
            return False

    def start_deployment(self, name: str, params: dict) -> str:
        """`prefect deployment run NAME --params JSON` without waiting for the run: its flow run id."""
        command = [str(BIN / "prefect"), "--no-prompt", "deployment", "run", name, "--params", json.dumps(params)]
        completed = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", completed.stdout)
        assert completed.returncode == 0 and match, completed.stdout + completed.stderr
        return match.group(1)

    @property
    def serve_pid_file(self) -> Path:
        """Where scripts/start.sh keeps the pid of the serve process it started (or, here, found)."""
        return self.work / "serve.pid"

    def serve_pid(self) -> int:
        """The process group of the serving process: the one scripts/start.sh started, else the fixture's."""
        if self.serve_pid_file.is_file():
            return int(self.serve_pid_file.read_text())
        return self.serve.pid

    def kill_serve(self) -> None:
        """SIGKILL the serving process group (the serve process and the flow runs it started), as a crash would."""
        pid = self.serve_pid()
        os.killpg(pid, signal.SIGKILL)
        for process in self.processes:
            if process.pid == pid:
                process.wait(timeout=30)  # reaped, as the shell that started it would
        deadline = time.monotonic() + 30
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(pid), f"process group {pid} survived SIGKILL"

    def neural_fit_script(self, args: list[str], timeout_s: float = 420) -> subprocess.CompletedProcess:
        """scripts/neural-fit.sh (what `make neural-fit` runs) against this server: start.sh finds the server by
        its port file and the serve process by its pid file, and restarts serve when that process is gone."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "prefect-server.port").write_text(f"{self.port}\n")
        if not self.serve_pid_file.is_file():
            self.serve_pid_file.write_text(f"{self.serve.pid}\n")
        env = {**self.env, "VENV": str(BIN.parent), "SERVE_TIMEOUT_S": "240"}
        return subprocess.run(["bash", str(ROOT / "scripts" / "neural-fit.sh"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout_s, start_new_session=True)

    def run_deployment(self, name: str, params: dict, timeout_s: float = 300) -> tuple[int, str, str]:
        """`prefect deployment run NAME --params JSON --watch`: (exit code, flow run id, output)."""
        return self.run_deployments([(name, params)], timeout_s)[0]

    def run_deployments(self, runs: list[tuple[str, dict]], timeout_s: float = 300) -> list[tuple[int, str, str]]:
        """Several `prefect deployment run ... --watch` at once; one (exit code, flow run id, output) each."""
        processes = []
        for name, params in runs:
            command = [str(BIN / "prefect"), "--no-prompt", "deployment", "run", name,
                       "--params", json.dumps(params), "--watch", "--watch-interval", "1"]
            processes.append(subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True, start_new_session=True))
        results = []
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop_group(process)
                output = process.stdout.read() if process.stdout else ""
                raise TimeoutError(f"{' '.join(process.args)} did not finish in {timeout_s}s:\n{output}\n"
                                   f"serve.log:\n{self.log_tail('serve.log')}") from None
            match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
            assert match, f"no flow run id in the output of {' '.join(process.args)}:\n{output}"
            results.append((process.returncode, match.group(1), output))
        return results

    def stop_all(self) -> None:
        if self.serve_pid_file.is_file():  # a serve process scripts/start.sh started
            pid = int(self.serve_pid_file.read_text())
            if pid not in [process.pid for process in self.processes] and _group_alive(pid):
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while _group_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _group_alive(pid):
                    os.killpg(pid, signal.SIGKILL)
        for process in reversed(self.processes):  # serve before the server
            stop_group(process)


def _group_alive(pgid: int) -> bool:
    """Whether a running (not zombie) process of the group is left (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """A Prefect server and `neuralign serve`, started once for the session and always stopped."""
    services = Services(tmp_path_factory.mktemp("prefect-services"))
    try:
        server = services.start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(services.port)], "server.log")
        services.wait_for(lambda: healthy(services.api_url), 150, "Prefect server", server, "server.log")
        services.serve = services.start([sys.executable, "-m", "flows.cli", "serve", "--work", str(services.work)],
                                        "serve.log")
        services.wait_for(services.deployments_exist, 150, "neuralign serve", services.serve, "serve.log")
        yield services
    finally:
        services.stop_all()
