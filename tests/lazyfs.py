"""A file system that forgets every write nobody synced, as a power cut does.

A test double for Jepsen's LazyFS (which cannot be fetched here): a FUSE file system,
held in memory, on which what a process writes is seen at once by every reader but
reaches "the disk" only when synced:

- a file's data (and size) when that file is fsynced or fdatasynced;
- a directory's entries (files and directories created, renamed, removed in it) when
  that directory is fsynced: a file created or renamed into a directory nobody synced
  is gone after the cut (or back under its old name), whatever became of its data.

``LazyMount`` runs the server (this file, as a script, under fusepy and libfuse2) on a
mount point, loading "the disk" from a state directory. ``cut()`` is the power cut:
the durable view (synced data under synced entries, nothing else) is written to the
state directory, every later operation fails with EIO, and the file system is
unmounted. Mount again on the same state directory to boot on what survived.

Root and /dev/fuse are needed to mount (the tests that use it skip elsewhere).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

READY, CUT, CUT_DONE = "ready", "cut", "cut-done"


class Node:
    """A file or directory: what processes see now, and what a cut would leave."""

    def __init__(self, mode: int, data: bytes = b"", mtime: float | None = None) -> None:
        self.mode = mode
        self.data = bytearray(data)  # a file's contents as readers see them
        self.synced = bytes(data)  # a file's contents as of its last fsync
        self.entries: dict[str, Node] = {}  # a directory's entries as seen
        self.synced_entries: dict[str, Node] = {}  # ... as of its last fsync
        self.mtime = time.time() if mtime is None else mtime

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def load(path: Path) -> Node:
    """A tree read from the state directory: all of it durable."""
    info = path.stat()
    if not path.is_dir():
        return Node(info.st_mode, path.read_bytes(), info.st_mtime)
    node = Node(info.st_mode, mtime=info.st_mtime)
    for child in sorted(path.iterdir()):
        node.entries[child.name] = load(child)
    node.synced_entries = dict(node.entries)
    return node


def dump(node: Node, path: Path) -> None:
    """Write what survives a power cut: synced entries, each with its synced data."""
    if node.is_dir:
        path.mkdir(exist_ok=True)
        for name, child in node.synced_entries.items():
            dump(child, path / name)
    else:
        path.write_bytes(node.synced)
    os.utime(path, (node.mtime, node.mtime))


def serve(state: Path, mountpoint: Path) -> None:
    """Mount the file system held in ``state`` on ``mountpoint`` until it is unmounted."""
    from fuse import FUSE, FuseOSError, Operations  # fusepy: only the server needs it

    class Lazy(Operations):  # type: ignore[misc]
        use_ns = False

        def __init__(self) -> None:
            self.root = load(state)
            self.handles: dict[int, Node] = {}
            self.next_handle = 1
            self.mutex = threading.RLock()
            self.frozen = False

        def __call__(self, op: str, *args: Any) -> Any:
            with self.mutex:
                if self.frozen:
                    raise FuseOSError(errno.EIO)
                return getattr(self, op)(*args)

        def _find(self, path: str | None, fh: int | None = None) -> Node:
            if fh is not None and fh in self.handles:
                return self.handles[fh]
            if path is None:
                raise FuseOSError(errno.EBADF)
            node = self.root
            for part in [p for p in path.split("/") if p]:
                if not node.is_dir or part not in node.entries:
                    raise FuseOSError(errno.ENOENT)
                node = node.entries[part]
            return node

        def _parent(self, path: str) -> tuple[Node, str]:
            head, _, name = path.rstrip("/").rpartition("/")
            parent = self._find(head or "/")
            if not parent.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            return parent, name

        def _handle(self, node: Node) -> int:
            handle, self.next_handle = self.next_handle, self.next_handle + 1
            self.handles[handle] = node
            return handle

        def init(self, path: str) -> None:
            print(READY, flush=True)

        def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
            node = self._find(path, fh)
            return {
                "st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1,
                "st_size": len(node.data), "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_atime": node.mtime, "st_mtime": node.mtime, "st_ctime": node.mtime,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *self._find(path).entries]

        def mkdir(self, path: str, mode: int) -> None:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = Node(stat.S_IFDIR | mode)

        def rmdir(self, path: str) -> None:
            parent, name = self._parent(path)
            if self._find(path).entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]

        def unlink(self, path: str) -> None:
            parent, name = self._parent(path)
            self._find(path)
            del parent.entries[name]

        def rename(self, old: str, new: str) -> None:
            source, old_name = self._parent(old)
            target, new_name = self._parent(new)
            node = self._find(old)
            replaced = target.entries.get(new_name)
            if replaced is not None and replaced.is_dir and replaced.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del source.entries[old_name]
            target.entries[new_name] = node

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = parent.entries[name] = Node(stat.S_IFREG | mode)
            return self._handle(node)

        def open(self, path: str, flags: int) -> int:
            return self._handle(self._find(path))

        def release(self, path: str | None, fh: int) -> None:
            self.handles.pop(fh, None)

        def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
            return bytes(self._find(path, fh).data[offset : offset + size])

        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            node = self._find(path, fh)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            node.mtime = time.time()
            return len(data)

        def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
            node = self._find(path, fh)
            del node.data[length:]
            node.data.extend(bytes(length - len(node.data)))
            node.mtime = time.time()

        def fsync(self, path: str | None, datasync: int, fh: int) -> None:
            node = self._find(path, fh)
            node.synced = bytes(node.data)

        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> None:
            node = self._find(path)
            node.synced_entries = dict(node.entries)

        def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
            self._find(path).mtime = times[1] if times else time.time()

        def chmod(self, path: str, mode: int) -> None:
            node = self._find(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

        def chown(self, path: str, uid: int, gid: int) -> None:
            self._find(path)

        def statfs(self, path: str) -> dict[str, int]:
            blocks = 1 << 24  # 64 GiB of 4 KiB blocks: never "below the floor"
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                    "f_bavail": blocks, "f_files": 1 << 20, "f_ffree": 1 << 20,
                    "f_favail": 1 << 20, "f_namemax": 255}

        def power_cut(self) -> None:
            """Write the durable view to the state directory and fail from now on."""
            with self.mutex:
                self.frozen = True
                fresh = state.with_name(state.name + ".new")
                shutil.rmtree(fresh, ignore_errors=True)
                dump(self.root, fresh)
                shutil.rmtree(state)
                fresh.rename(state)

    lazy = Lazy()

    def control() -> None:
        for line in sys.stdin:
            if line.strip() == CUT:
                lazy.power_cut()
                print(CUT_DONE, flush=True)

    threading.Thread(target=control, daemon=True).start()
    FUSE(lazy, str(mountpoint), foreground=True, nothreads=True, big_writes=True,
         hard_remove=True, fsname="lazyfs", subtype="lazyfs")


class LazyMount:
    """The server above, mounted on ``mountpoint`` with "the disk" in ``state``."""

    def __init__(self, state: Path, mountpoint: Path, log: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self._log = log.open("ab")
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, __file__, str(state), str(mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._expect(READY)

    def _expect(self, word: str) -> None:
        """Wait for the server to say ``word`` (it says nothing else)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            self.close()
            raise RuntimeError(f"lazyfs said {line!r}, not {word!r} (see {self._log.name})")

    def _send(self, word: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(word + "\n")
        stdin.flush()

    def cut(self) -> None:
        """The power cut: keep only what was synced, and unmount. Kill every process
        writing here first (their writes after this point fail with EIO)."""
        self._send(CUT)
        self._expect(CUT_DONE)
        self.close()

    def close(self) -> None:
        """Unmount and wait for the server to end."""
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
        self.proc.terminate()  # libfuse ends its loop on SIGTERM; open files see EIO
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._log.close()

    def __enter__(self) -> LazyMount:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]))
