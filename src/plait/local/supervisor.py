"""Process supervision for `plait up`: start, ready-check, restart with back-off, stop.

Generic: it knows process specs, not meshes. A `Supervisor` owns every process it starts and
one monitor task per process; `aclose()` (or leaving `async with`) stops them all, also when it
is cancelled.

Theory of operation:
- Each child runs in its own session and process group (`start_new_session=True`), so a
  terminal's Ctrl-C reaches only `plait up`, and stopping a child is one `killpg` that also
  reaches anything it spawned. A group never outlives its leader: when a leader exits, the rest
  of its group gets SIGKILL.
- On Linux each child also asks the kernel for SIGKILL when its parent dies
  (`PR_SET_PDEATHSIG`), so even `kill -9` of `plait up` leaves no orphan app or proxy.
- A child that exits before it was ever ready fails `start()`; one that exits later is restarted
  after an exponential back-off (`Backoff`), reported through `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "Backoff",
    "HttpReady",
    "ProcessSpec",
    "ProcessState",
    "ReadyCheck",
    "Supervisor",
    "SupervisorError",
    "TcpReady",
    "http_get",
]

POLL_INTERVAL = 0.05  # 50 ms: ready within a blink, yet a negligible load on the apps
PROBE_TIMEOUT = 0.5  # a local listener answers in microseconds; longer means "not yet"
LOG_TAIL_LINES = 20
KILL_WAIT = 1.0  # SIGKILL cannot be ignored: this only lets the kernel finish delivering it
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

State = Literal["starting", "ready", "backoff", "failed", "stopped"]


class SupervisorError(Exception):
    """A process could not be started: it exited early or was not ready in time."""


@dataclass(frozen=True)
class HttpReady:
    """Ready when `GET url` answers 200."""

    url: str


@dataclass(frozen=True)
class TcpReady:
    """Ready when a TCP connection to host:port succeeds."""

    host: str
    port: int


ReadyCheck = HttpReady | TcpReady


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. `env` is merged over os.environ; `ready` None means ready once started;
    `log_path` receives stdout and stderr (appended), None inherits ours."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    ready: ReadyCheck | None = None
    log_path: str | None = None


@dataclass(frozen=True)
class ProcessState:
    """A read-only view of one supervised process; `since` is on the supervisor's clock."""

    name: str
    pid: int | None
    state: State
    restarts: int
    last_exit_code: int | None
    since: float


@dataclass
class Backoff:
    """Restart delays: `initial` doubling up to `maximum`, back to `initial` after a process
    ran `reset_after` seconds (a healthy run forgives earlier crashes). Pure: no clock."""

    initial: float = 0.5  # quick enough that a one-off crash is barely noticed
    maximum: float = 30.0  # a crash loop costs at most one start every 30 s
    reset_after: float = 60.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def next_delay(self, ran_for: float) -> float:
        """The wait before restarting a process that ran `ran_for` seconds."""
        if ran_for >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay


async def http_get(url: str, *, timeout: float = PROBE_TIMEOUT) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET over asyncio streams (status, body): enough for local ready
    checks and admin endpoints without a client library. Raises OSError or TimeoutError."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[1].isdigit():
        raise ConnectionError(f"GET {url}: not an HTTP response")
    return int(status[1]), body


async def _probe(check: ReadyCheck) -> bool:
    try:
        if isinstance(check, HttpReady):
            status, _ = await http_get(check.url)
            return status == 200
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(check.host, check.port)
        writer.close()
        return True
    except (OSError, TimeoutError):
        return False


async def _wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait for `popen` to exit and reap it: woken by a pidfd where there are pidfds, else by
    polling."""
    if popen.poll() is None:  # not reaped, so its pid is still ours to open
        with contextlib.suppress(AttributeError, OSError):  # no pidfd_open here: poll below
            await _pidfd_readable(popen.pid)
    while popen.poll() is None:
        await asyncio.sleep(POLL_INTERVAL)
    return popen.returncode


async def _pidfd_readable(pid: int) -> None:
    """Return when the process exits: its pidfd becomes readable (Linux 5.3+)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not exited.done():
            exited.set_result(None)

    fd = os.pidfd_open(pid)
    try:
        loop.add_reader(fd, wake)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Gone already, or (after the group emptied) an id we no longer own: nothing to do.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_gone(leader: subprocess.Popen[bytes]) -> bool:
    """True once no process of the leader's group runs any more."""
    leader.poll()  # reap the leader if it exited: its zombie alone keeps the group alive
    try:
        os.killpg(leader.pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    # Members remain. Orphans are reaped by init, not by us, and an init may be slow (or absent
    # in a container), so on Linux a group of zombies counts as gone; elsewhere it waits.
    return os.path.isdir("/proc") and not any(_running_members(leader.pid))


def _running_members(pgid: int) -> Iterator[int]:
    """Pids of the group's processes that are not zombies, from /proc (Linux)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state, _ppid, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
            except OSError:  # exited while we looked
                continue
            if int(pgrp) == pgid and state != b"Z":
                yield int(entry.name)


async def _wait_groups_gone(leaders: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait up to `timeout` for every leader's group to be gone."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not all(_group_gone(leader) for leader in leaders):
                await asyncio.sleep(POLL_INTERVAL)


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel SIGKILL the child when we die (Linux only).

    preexec_fn is risky in threaded programs because Python code runs between fork and exec;
    here it is one C call through a function pointer resolved before the fork, so it takes no
    lock. It composes with `start_new_session`: Popen calls setsid() in C before preexec_fn.
    The signal follows the *thread* that forked: the supervisor spawns from the event loop
    thread, which lives as long as `plait up`.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong)
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return preexec


def _describe_exit(code: int) -> str:
    """Popen's return code in words: negative means killed by that signal."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _log_tail(path: str | None) -> str:
    if path is None:
        return " (output not captured)"
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError as e:
        return f" (cannot read {path}: {e.strerror})"
    if not lines:
        return f"; {path} is empty"
    return f"; last lines of {path}:\n" + "\n".join(f"  {line}" for line in lines)


class _Child:
    """Bookkeeping for one spec; only its Supervisor mutates it."""

    def __init__(self, spec: ProcessSpec, now: float, backoff: Backoff) -> None:
        self.spec = spec
        self.popen: subprocess.Popen[bytes] | None = None
        self.state: State = "starting"
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.since = now
        self.started_at = now
        self.backoff = backoff

    def view(self) -> ProcessState:
        pid = self.popen.pid if self.popen and self.popen.returncode is None else None
        return ProcessState(
            self.spec.name, pid, self.state, self.restarts, self.last_exit_code, self.since
        )


class Supervisor:
    """Starts processes, keeps them running and stops them all.

    Owns its children and their monitor tasks; `aclose()` is idempotent and always ends with
    every process group killed. `clock` and `sleep` (back-off waits only) are injectable so
    back-off is testable without real time.
    """

    def __init__(
        self,
        *,
        grace: float = 5.0,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._grace = grace
        self._on_event = on_event or (lambda _: None)
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff
        self._children: dict[str, _Child] = {}
        self._monitors: list[asyncio.Task[None]] = []
        self._preexec = _die_with_parent()
        self._closed = False

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def states(self) -> list[ProcessState]:
        return [child.view() for child in self._children.values()]

    async def start(
        self, specs: Sequence[ProcessSpec | Sequence[ProcessSpec]], *, ready_timeout: float = 30.0
    ) -> None:
        """Start `specs` in order; an inner list is a group started concurrently. Each group is
        ready before the next starts. On SupervisorError the processes already started keep
        running until `aclose()`."""
        for group in specs:
            children = [
                self._add(s) for s in ([group] if isinstance(group, ProcessSpec) else group)
            ]
            try:
                async with asyncio.TaskGroup() as tg:
                    for child in children:
                        tg.create_task(self._first_start(child, ready_timeout))
            except BaseExceptionGroup as errors:
                raise errors.exceptions[0] from None

    def _add(self, spec: ProcessSpec) -> _Child:
        if self._closed:
            raise SupervisorError("supervisor is closed")
        if spec.name in self._children:
            raise ValueError(f"duplicate process name {spec.name!r}")
        child = self._children[spec.name] = _Child(spec, self._clock(), self._backoff())
        return child

    async def _first_start(self, child: _Child, ready_timeout: float) -> None:
        name = child.spec.name
        self._spawn(child)
        try:
            async with asyncio.timeout(ready_timeout):
                ready = await self._until_ready(child)
        except TimeoutError:
            self._set(child, "failed")
            raise SupervisorError(
                f"{name} was not ready after {ready_timeout:g} s{_log_tail(child.spec.log_path)}"
            ) from None
        if not ready:
            assert child.popen is not None
            child.last_exit_code = await self._reap(child.popen)
            self._set(child, "failed")
            raise SupervisorError(
                f"{name} {_describe_exit(child.last_exit_code)} before it was ready"
                f"{_log_tail(child.spec.log_path)}"
            )
        self._set(child, "ready")
        self._monitors.append(asyncio.create_task(self._monitor(child), name=f"monitor {name}"))

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        # The child gets its own copy of the log file descriptor; ours closes on leaving.
        try:
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(open(spec.log_path, "ab")) if spec.log_path else None
                child.popen = subprocess.Popen(
                    spec.argv,
                    env={**os.environ, **spec.env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                    start_new_session=True,
                    preexec_fn=self._preexec,
                )
        except OSError as e:
            self._set(child, "failed")
            raise SupervisorError(f"{spec.name}: cannot start: {e}") from e
        child.started_at = self._clock()
        self._set(child, "starting")

    async def _until_ready(self, child: _Child) -> bool:
        """True once the ready check passes, False if the process exits first."""
        assert child.popen is not None
        while child.popen.poll() is None:
            if child.spec.ready is None or await _probe(child.spec.ready):
                return True
            await asyncio.sleep(POLL_INTERVAL)
        return False

    async def _monitor(self, child: _Child) -> None:
        """Restart `child` whenever it exits, after its back-off; runs until cancelled."""
        name = child.spec.name
        while True:
            assert child.popen is not None
            code = await self._reap(child.popen)
            child.last_exit_code = code
            delay = child.backoff.next_delay(self._clock() - child.started_at)
            self._set(child, "backoff")
            self._on_event(f"{name} {_describe_exit(code)}; restarting in {delay:.1f} s")
            await self._sleep(delay)
            try:
                self._spawn(child)
            except SupervisorError as e:
                self._on_event(str(e))
                return
            child.restarts += 1
            if await self._until_ready(child):
                self._set(child, "ready")
                self._on_event(f"{name} is ready again (restart {child.restarts})")

    async def _reap(self, popen: subprocess.Popen[bytes]) -> int:
        code = await _wait_exit(popen)
        if not _group_gone(popen):  # members hold the group id, so it is still this group
            _signal_group(popen.pid, signal.SIGKILL)  # whatever the leader left behind
        return code

    def _set(self, child: _Child, state: State) -> None:
        child.state = state
        child.since = self._clock()

    async def aclose(self) -> None:
        """SIGTERM every process group, give the groups up to `grace` to exit, SIGKILL what is
        left, reap the leaders. Idempotent; if cancelled, the SIGKILL still happens."""
        self._closed = True
        for task in self._monitors:
            task.cancel()  # a monitor spawns only after an await, so none spawns from here on
        live = [c.popen for c in self._children.values() if c.popen and c.popen.returncode is None]
        try:
            for popen in live:
                _signal_group(popen.pid, signal.SIGTERM)
            await _wait_groups_gone(live, self._grace)
        finally:
            for popen in live:
                if not _group_gone(popen):
                    _signal_group(popen.pid, signal.SIGKILL)
        await _wait_groups_gone(live, KILL_WAIT)
        await asyncio.gather(*map(_wait_exit, live), *self._monitors, return_exceptions=True)
        self._monitors.clear()
        for child in self._children.values():
            if child.popen in live:
                child.last_exit_code = child.popen.returncode
            self._set(child, "stopped")
