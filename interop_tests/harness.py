"""Several administrations as separate hosts: one Linux network namespace per gateway.

Each host gets its own namespace (``ip netns``) with loopback up and one end of a veth pair
carrying an address in a private per-run subnet; the other end sits on a bridge this harness
creates in the root namespace. Every gateway has its own home directory and SQLite database and
is driven only through the ``mragw`` commands a container would run, executed inside its
namespace with ``ip netns exec``. :meth:`Network.close` tears everything down (serve processes
by process group, namespaces, veths, bridge) and is safe to call more than once.

Environment:

- ``MRAGW_INTEROP_SUBNET``: the first three octets of the test /24 (default derived from the
  pid, ``10.X.Y``);
- ``MRAGW_REQUIRE_NETNS=1``: fail instead of skipping where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MRAGW = str(Path(sys.executable).parent / "mragw")
PORT = 7443
# The repository root, so ``python -m interop_tests.X`` runs inside a namespace.
REPO_ROOT = Path(__file__).resolve().parent.parent

# Fast settings for tests, passed to `mragw serve` as config overrides.
SPEED_ENV: dict[str, str] = {
    "MRAGW_REPLICATION__POLL_INTERVAL_S": "0.05",
    "MRAGW_REPLICATION__BACKOFF_INITIAL_S": "0.05",
    "MRAGW_REPLICATION__BACKOFF_MAX_S": "0.5",
    "MRAGW_TRUST__REFRESH_INTERVAL_S": "0.5",
    "MRAGW_TRUST__WITNESS_INTERVAL_S": "1",
    "MRAGW_SERVER__SHUTDOWN_GRACE_S": "1",
}
REFRESH_INTERVAL_S = float(SPEED_ENV["MRAGW_TRUST__REFRESH_INTERVAL_S"])


class HarnessError(RuntimeError):
    """A harness step failed (a command's exit code, a deadline)."""


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or set up the CI runner)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not Path(MRAGW).exists():
        return f"mragw is not installed next to {sys.executable}"
    probe = f"mgprobe{os.getpid() % 100000}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def parallel(fn: Callable[[T], R], items: Iterable[T], workers: int = 4) -> list[R]:
    """``fn`` over ``items`` on a few threads (CLI calls are process-bound), in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def default_subnet() -> str:
    pid = os.getpid()
    return f"10.{100 + (pid >> 8) % 100}.{pid % 256}"


@dataclass
class Host:
    """One administration's gateway on its own "host" (network namespace)."""

    code: str
    ns: str
    veth_root: str
    veth_ns: str
    addr: str
    home: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    fingerprint: str = ""
    bundle: Path | None = None
    starts: int = 0
    # Extra `mragw serve` arguments (a replica's --replica-name, --listen, --admin-listen).
    serve_args: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.addr}:{PORT}"

    @property
    def db_path(self) -> Path:
        return self.home / "mragw.db"

    # -- commands run inside the namespace -----------------------------------------------

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``mragw ARGS`` inside this host's namespace."""
        cmd = ["ip", "netns", "exec", self.ns, MRAGW, *args]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=self._env(), check=False
        )
        if check and done.returncode != 0:
            raise HarnessError(
                f"[{self.code}] mragw {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stderr.strip()}\n{done.stdout.strip()}"
            )
        return done

    def run_json(self, *args: str, timeout: float = 120.0) -> Any:
        return json.loads(self.run(*args, "--json", timeout=timeout).stdout)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SPEED_ENV)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def init(self) -> None:
        self.run_json(
            "init",
            "--admin",
            self.code,
            "--home",
            str(self.home),
            "--listen",
            self.endpoint,
            "--admin-listen",
            "127.0.0.1:7444",
            "--http-listen",
            "127.0.0.1:0",
            "--endpoint",
            self.endpoint,
        )
        self.bundle = self.home.parent / f"{self.code.lower()}.bundle"
        out = self.run_json(
            "partner", "export", "--home", str(self.home), "--out", str(self.bundle)
        )
        self.fingerprint = str(out["fingerprint"])

    def pin(self, other: Host) -> None:
        """Onboard ``other`` from its partner bundle and root fingerprint."""
        assert other.bundle is not None
        self.run(
            "partner",
            "add",
            str(other.bundle),
            "--home",
            str(self.home),
            "--fingerprint",
            other.fingerprint,
        )

    def start(self) -> None:
        """``mragw serve`` in its own process group, output to the host's log file."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"{self.code} is already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} at {time.time():.3f} =====\n".encode())
            log.flush()
            serve = ["serve", "--home", str(self.home), *self.serve_args]
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, MRAGW, *serve],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll `mragw health` until it exits 0, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"{self.code}: serve exited {self.proc.returncode}")
            if self.run("health", "--home", str(self.home), check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.code}: not healthy after {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the serve process group and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is not None:
            _end(self.proc, grace=10.0)

    def restart(self) -> None:
        """Start again with the same command (after a kill or stop) and wait until healthy."""
        self.stop()
        self.start()
        self.wait_healthy()

    def publish(self, path: Path) -> str:
        return self.run("publish", str(path), "--home", str(self.home)).stdout.strip()

    def status(self) -> dict[str, Any]:
        return dict(self.run_json("status", "--home", str(self.home), timeout=60))

    def partner_status(self, code: str) -> dict[str, Any] | None:
        for p in self.status()["partners"]:
            if p["admin"] == code:
                return dict(p)
        return None

    def check(self, operator: str, issuer: str, at: str) -> dict[str, Any]:
        return dict(
            self.run_json(
                "check",
                "--home",
                str(self.home),
                "--operator",
                operator,
                "--issuer",
                issuer,
                "--at",
                at,
            )
        )

    # -- direct reads of the node's SQLite database (read only) ---------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()

    def log_head(self, code: str) -> tuple[int, bytes]:
        """(size, root) of the log of ``code`` as this node stores it."""
        rows = self.query("SELECT size, root FROM logs WHERE code = ?", code)
        if not rows:
            return (0, b"")
        return (int(rows[0][0]), bytes(rows[0][1]))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


class Network:
    """A bridge in the root namespace and one namespace per host."""

    def __init__(self, base: Path, subnet: str | None = None) -> None:
        self.base = base
        self.suffix = f"{os.getpid() % 100000:05d}"
        self.subnet = subnet or os.environ.get("MRAGW_INTEROP_SUBNET") or default_subnet()
        self.bridge = f"mgbr{self.suffix}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._bridge_made = False
        self._extra_procs: list[subprocess.Popen[bytes]] = []

    def setup(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, code: str) -> Host:
        n = len(self.hosts)
        ns = f"mragw-{self.suffix}-{code.lower()}"
        veth_root = f"mgv{self.suffix}h{n}"
        veth_ns = f"mgv{self.suffix}n{n}"
        addr = f"{self.subnet}.{10 + n}"
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("link", "add", veth_root, "type", "veth", "peer", "name", veth_ns)
        self._links.append(veth_root)
        ip("link", "set", veth_ns, "netns", ns)
        ip("link", "set", veth_root, "master", self.bridge)
        ip("link", "set", veth_root, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth_ns)
        ip("-n", ns, "link", "set", veth_ns, "up")
        home = self.base / code.lower()
        host = Host(
            code=code,
            ns=ns,
            veth_root=veth_root,
            veth_ns=veth_ns,
            addr=addr,
            home=home,
            log_path=self.base / f"{code.lower()}.log",
        )
        self.hosts[code] = host
        return host

    def __getitem__(self, code: str) -> Host:
        return self.hosts[code]

    # -- building a mesh ------------------------------------------------------------------

    def build(
        self,
        codes: Sequence[str],
        pairs: Iterable[tuple[str, str]] | None = None,
        start: bool = True,
    ) -> list[Host]:
        """Hosts for ``codes``, initialised, each pair pinned both ways (every pair by
        default), started and healthy."""
        hosts = [self.add_host(c) for c in codes]
        parallel(lambda h: h.init(), hosts)
        chosen = (
            list(pairs)
            if pairs is not None
            else [(a, b) for i, a in enumerate(codes) for b in codes[i + 1 :]]
        )
        # Each home is written by one command at a time: pin per host, hosts in parallel.
        wanted: dict[str, list[str]] = {c: [] for c in codes}
        for a, b in chosen:
            wanted[a].append(b)
            wanted[b].append(a)

        def pin_all(h: Host) -> None:
            for other in wanted[h.code]:
                h.pin(self.hosts[other])

        parallel(pin_all, hosts)
        if start:
            for h in hosts:
                h.start()
            parallel(lambda h: h.wait_healthy(), hosts)
        return hosts

    # -- faults ---------------------------------------------------------------------------

    def link_down(self, host: Host) -> None:
        ip("link", "set", host.veth_root, "down")

    def link_up(self, host: Host) -> None:
        ip("link", "set", host.veth_root, "up")

    def kill(self, host: Host, sig: int = signal.SIGKILL) -> None:
        host.kill(sig)

    def restart(self, host: Host) -> None:
        host.restart()

    def spawn_in(self, host: Host, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Any other process (e.g. a proxy) inside ``host``'s namespace, torn down with it."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._extra_procs.append(proc)
        return proc

    def spawn_module(
        self,
        host: Host,
        module: str,
        args: Sequence[str],
        log: Path,
        *,
        ready: str = "listening ",
        timeout: float = 30.0,
    ) -> tuple[subprocess.Popen[bytes], str]:
        """``python -m MODULE ARGS`` (a module of this repository) inside ``host``'s namespace,
        torn down with it. Waits until the process prints a line starting with ``ready`` on
        stdout and returns the process and the rest of that line; stderr and any further
        stdout go to ``log``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, sys.executable, "-m", module, *args],
                stdout=subprocess.PIPE,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        self._extra_procs.append(proc)
        assert proc.stdout is not None
        stdout = proc.stdout
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError(f"{module} in {host.ns} not ready within {timeout:.0f} s")
            readable, _, _ = select.select([stdout], [], [], min(left, 0.5))
            if not readable:
                if proc.poll() is not None:
                    raise HarnessError(f"{module} in {host.ns} exited {proc.returncode}")
                continue
            byte = os.read(stdout.fileno(), 1)
            if not byte:
                raise HarnessError(f"{module} in {host.ns} closed stdout before being ready")
            line += byte
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith(ready):
            raise HarnessError(f"{module} in {host.ns} printed {text!r}, not {ready!r}...")

        def drain() -> None:
            with log.open("ab") as out:
                for rest in stdout:
                    out.write(rest)
                    out.flush()

        threading.Thread(target=drain, daemon=True).start()
        return proc, text[len(ready) :]

    def end(self, proc: subprocess.Popen[bytes]) -> None:
        """Terminate (then kill) a process started with :meth:`spawn_in` or
        :meth:`spawn_module` before the network closes."""
        _end(proc)

    # -- waiting --------------------------------------------------------------------------

    def wait_replicated(
        self, at: Host, issuer: str, size: int, timeout: float = 60.0, interval: float = 0.2
    ) -> float:
        """Poll ``mragw status --json`` at ``at`` until its replica of ``issuer`` holds
        ``size`` entries, all verified; return the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last: dict[str, Any] | None = None
        while True:
            last = at.partner_status(issuer)
            if (
                last is not None
                and last["entries"] == size
                and last["tree_size"] == size
                and last["unverified"] == 0
            ):
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{at.code} did not replicate {issuer} to size {size} within "
                    f"{timeout:.0f} s; last status: {json.dumps(last)}"
                )
            time.sleep(interval)

    def wait_all_replicated(self, timeout: float = 60.0, interval: float = 0.3) -> float:
        """Every host's replica of every partner it pinned equals that partner's log size
        (one `mragw status` per host per round); return the seconds it took."""
        t0 = time.monotonic()
        hosts = list(self.hosts.values())
        sizes = dict(zip([h.code for h in hosts], parallel(_log_size, hosts), strict=False))

        def converged(h: Host) -> float:
            deadline = t0 + timeout
            while True:
                partners = h.status()["partners"]
                behind = [
                    p
                    for p in partners
                    if not (
                        p["entries"] == sizes[p["admin"]]
                        and p["tree_size"] == sizes[p["admin"]]
                        and p["unverified"] == 0
                    )
                ]
                if not behind:
                    return time.monotonic() - t0
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"{h.code} did not converge within {timeout:.0f} s (sizes {sizes}): "
                        f"{json.dumps(behind)}"
                    )
                time.sleep(interval)

        return max(parallel(converged, hosts, workers=len(hosts)))

    # -- teardown -------------------------------------------------------------------------

    def logs(self) -> str:
        parts = []
        for h in self.hosts.values():
            parts.append(f"----- {h.code} ({h.ns}, {h.addr}) log -----\n{h.log_text()}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self._extra_procs:
            _end(proc)
        for h in self.hosts.values():
            if h.proc is not None:
                _end(h.proc)
        for ns in self._namespaces:
            ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        for link in self._links:
            # Usually gone with its peer's namespace.
            if ip("link", "show", link, check=False).returncode == 0:
                ip("link", "del", link, check=False)
        self._links.clear()
        if self._bridge_made:
            ip("link", "del", self.bridge, check=False)
            self._bridge_made = False


def _log_size(host: Host) -> int:
    return int(host.status()["log_size"])


def _end(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate, then kill after ``grace`` seconds, a process group this harness started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=10)
