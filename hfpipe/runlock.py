"""One writer per directory: an exclusive OS lock on DIR/.hfpipe-lock, which records who holds it.

A command that writes a directory (train, merge, fewshot, evaluate's outputs) holds the lock while it
runs; a second one exits at once with a usage error naming the holder's pid and command. The lock is
flock(2) through filelock: the kernel releases it when the holder dies, however it dies, so a lock file
left by a killed process is simply taken, with a warning naming that process.

The file holds JSON {pid, host, command, started} while a command holds it, and nothing between
commands. It stays in an hfpipe run directory (never deleted there, so two commands never lock two
different files of one name); a directory that is not a run keeps no lock file, and one that the lock
created and nothing else filled is removed again.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hfpipe import io
from hfpipe.errors import UsageError

log = logging.getLogger("hfpipe")

# Set by `hfpipe train --num-processes N` for the processes it launches: the pid of the launching
# process, which holds the lock of output_dir for all of them.
LAUNCHER_PID = "HFPIPE_RUN_LOCK_PID"

_HELD: set[Path] = set()  # directories this process holds: a nested hold of one of them is a no-op
_SCOPE: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("runlock", default=None)


@contextlib.contextmanager
def hold(directory: str | Path | None, *, command: str | None = None, create: bool = True) -> Iterator[None]:
    """Hold `directory`'s lock for the block; a UsageError (exit 2) at once when a live process holds it.

    `create`: make the directory and the lock file if needed; without it, only a directory that already
    has a lock file is locked (evaluate -o FILE: FILE's folder is locked if an hfpipe command uses it).
    None, a directory this process already holds, and /, the home directory and the repository root
    are not locked (they are never run directories: train and merge refuse them; no lock file goes there).
    """
    if directory is None:
        yield
        return
    path = Path(directory).expanduser().resolve()
    lock_file = path / io.LOCK
    if path in _HELD or path in io.forbidden_output_dirs() or not (create or lock_file.exists()):
        yield
        return
    if path.exists() and not path.is_dir():
        raise UsageError("exists and is not a directory", file=str(directory))
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders the lock creates, leaf first
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock, fd = _acquire(lock_file, directory)
    except OSError as exc:
        _remove_empty(made)
        raise UsageError(f"cannot lock the directory: {exc.strerror or exc}", file=str(directory)) from None
    except BaseException:
        _remove_empty(made)
        raise
    if lock is None:  # nothing to hold: the launching process holds it for us, or no flock here
        yield
        return
    _HELD.add(path)
    try:
        _record(fd, directory, command or _this_command())
        yield
    finally:
        _HELD.discard(path)
        _release(lock, fd, path)
        _remove_empty(made)


def _acquire(lock_file: Path, directory) -> tuple[object | None, int]:
    """(the acquired FileLock, its descriptor), or (None, -1) when this process may write unlocked."""
    from filelock import FileLock, Timeout

    descriptor: list[int] = []
    # preserve_lock_file: the native lock only, never filelock's soft fallback (a marker file that outlives
    # a killed holder); on_acquired hands over the descriptor the record is written through (closing
    # another descriptor of the file would drop an NFS lock).
    lock = FileLock(str(lock_file), timeout=0, preserve_lock_file=True, on_acquired=descriptor.append)
    for _ in range(50):
        try:
            lock.acquire()
            return lock, descriptor[-1]
        except Timeout:
            holder = _read(lock_file)
            if holder is None:  # the holder is writing its record, or has just cleared it: try again
                time.sleep(0.02)
                continue
            if holder["pid"] == _launcher_pid() and holder["host"] == socket.gethostname():
                return None, -1  # `hfpipe train --num-processes`: the process that launched this one holds it
            raise UsageError(
                f"in use by {_describe(holder)}; wait for it to finish or stop it", file=str(directory)
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                log.warning(
                    "%s: this file system cannot lock files; nothing stops a second writer", directory
                )
                return None, -1
            raise
    raise UsageError("in use by another process; wait for it to finish or stop it", file=str(directory))


def _record(fd: int, directory, command: str) -> None:
    """Write this process into the lock file; warn when a killed holder's record was still there."""
    previous = _parse(os.pread(fd, 65536, 0))
    if previous is not None:
        gone = previous["host"] == socket.gethostname() and not _alive(previous["pid"])
        log.warning(
            "%s: took over the lock of %s, %s",
            directory,
            _describe(previous),
            "which is gone" if gone else "which no longer holds it",
        )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _release(lock, fd: int, path: Path) -> None:
    """Clear the record (a run directory keeps its empty lock file) or remove the lock file (any other
    directory), then unlock."""
    try:
        if (path / io.MARKER).exists():
            os.ftruncate(fd, 0)
        else:
            # Unlinked before the unlock: a process that opened the old file finds it unlinked when it
            # gets the lock and gives up (filelock checks), one that comes later makes a new file.
            (path / io.LOCK).unlink(missing_ok=True)
    finally:
        lock.release()


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created and left empty, innermost first."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _read(lock_file: Path) -> dict | None:
    try:
        return _parse(lock_file.read_bytes())
    except OSError:
        return None


def _parse(data: bytes) -> dict | None:
    """The record in a lock file, or None (empty: nobody; cut short: being written)."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    return {"host": "", "command": "?", "started": "?", **record}


def _describe(record: dict) -> str:
    """'pid 1234 (hfpipe train r.yaml), started 14:02:11': the start's date only when not today."""
    started = str(record["started"])
    day, _, clock = started.partition("T")
    when = clock if day == time.strftime("%Y-%m-%d") else started.replace("T", " ")
    host = "" if record["host"] == socket.gethostname() else f" on {record['host']}"
    command = " ".join(str(record["command"]).split())  # one line
    return f"pid {record['pid']}{host} ({command}), started {when}"


def _this_command() -> str:
    """This process's command line: `hfpipe ARGS` for the CLI (as the model card writes it)."""
    program = Path(sys.argv[0] if sys.argv else "")
    if program.name == "hfpipe" or program.parent.name == "hfpipe":  # the script, or python -m hfpipe
        return shlex.join(["hfpipe", *sys.argv[1:]])
    return shlex.join([Path(sys.executable).name, *sys.argv])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _launcher_pid() -> int | None:
    value = os.environ.get(LAUNCHER_PID, "")
    return int(value) if value.isdigit() else None


@contextlib.contextmanager
def hold_for_launched(directory: str | Path, *, command: str | None = None) -> Iterator[None]:
    """Hold `directory` for processes this one starts (`hfpipe train --num-processes`): they find the
    holder's pid in their environment and write without locking again."""
    with hold(directory, command=command):
        before = os.environ.get(LAUNCHER_PID)
        os.environ[LAUNCHER_PID] = str(os.getpid())
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(LAUNCHER_PID, None)
            else:
                os.environ[LAUNCHER_PID] = before


def scoped(function):
    """Decorator: the locks `claim` takes during a call of `function` are held until the call ends."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _SCOPE.set(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _SCOPE.reset(token)

    return wrapper


def claim(directory: str | Path | None, *, command: str | None = None, main: bool = True) -> None:
    """Hold `directory`'s lock until the enclosing @scoped function returns (see `hold`). `main`: False in
    the other processes of a multi-process run, which write only what the main process allows them to."""
    stack = _SCOPE.get()
    if stack is None:
        raise RuntimeError("runlock.claim outside a @runlock.scoped function")
    if main:
        stack.enter_context(hold(directory, command=command))
