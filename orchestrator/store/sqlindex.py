"""The local index: one SQLite table of JSON values, in ``<cache>/index/cache.db``.

    kv(key TEXT PRIMARY KEY, value TEXT)   value: JSON; the key kinds are in store/index.py

A no-op build opens the index, reads a few hundred keys and writes a few; that must cost well
under a millisecond, so the index is a plain SQLite table on one connection, not a general cache
library (diskcache, used before, rewrote its settings on every open and paid a checkpoint with
an fsync for it: ~20-40 ms of a ~250 ms no-op). Values are JSON, never pickles: reading the index
runs no code from it.

Write-ahead log (WAL): readers never wait for the one writer, a killed build leaves the last
committed state, and concurrent builds on one cache wait for each other's short write
transactions (the busy timeout). ``transact()`` groups writes into one transaction.

An index written by diskcache (deploy-build before December 2026) is converted in place on the
first open, in one transaction: its entries are kept, so an upgrade rebuilds nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1  # PRAGMA user_version of an index in this format
DB_NAME = "cache.db"
BUSY_TIMEOUT_S = 60.0  # another build's write transaction is waited for this long


class NewerIndex(Exception):
    """The index was written by a newer deploy-build (a schema this version does not know)."""


class Index:
    """Key -> JSON value, with transactions; safe to share between the threads of a process."""

    def __init__(self, folder: Path, timeout: float = BUSY_TIMEOUT_S) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / DB_NAME
        self._timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0  # transact() nesting
        self._pid = os.getpid()
        self._con = self._connect()

    # ---- connection ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None,
                              check_same_thread=False)
        try:
            con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                with self._setting_up():
                    self._setup(con, con.execute("PRAGMA user_version").fetchone()[0])
        except BaseException:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def _setting_up(self) -> Iterator[None]:
        """One process at a time sets a new index up: two builds that switched a new file to WAL
        at the same instant deadlocked in SQLite, and one got SQLITE_BUSY at once (the busy
        timeout does not apply to that deadlock)."""
        import fcntl

        fd = os.open(self.folder / ".setup.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for the few ms a setup takes
            yield
        finally:
            os.close(fd)

    def _setup(self, con: sqlite3.Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise NewerIndex(f"the cache index {self.path} was written by a newer deploy-build "
                             f"(format {version}, this one knows {SCHEMA_VERSION}); upgrade, or "
                             "use another --cache")
        con.execute("PRAGMA journal_mode=WAL")  # kept in the file: set once
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # not raced
                con.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, "
                            "value TEXT NOT NULL) WITHOUT ROWID")
                files = _convert_diskcache(con, self.folder)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                files = []
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for f in files:  # the converted values' own files, once the conversion is committed
            with contextlib.suppress(OSError):
                os.unlink(f)

    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # a forked child: never share the parent's connection
            self._pid, self._depth = os.getpid(), 0
            self._con = self._connect()
        return self._con

    # ---- reads and writes ----------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError:  # a value damaged on disk: as if absent (a rebuild, a re-hash)
            return default

    def set(self, key: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"))
        with self._lock:
            self._db().execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, text))

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._db().execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    def iterkeys(self) -> Iterator[str]:
        """Every key, sorted (a snapshot: the index may be changed while iterating)."""
        with self._lock:
            keys = [r[0] for r in self._db().execute("SELECT key FROM kv ORDER BY key")]
        return iter(keys)

    __iter__ = iterkeys

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return self._db().execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM kv").fetchone()[0])

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """One write transaction for the block (nested blocks join the outer one); rolled back
        when the block raises."""
        with self._lock:
            con = self._db()
            if self._depth == 0:
                con.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    con.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                con.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                self._con.close()


# diskcache's value modes (diskcache.core.MODE_*)
_RAW, _BINARY, _TEXT, _PICKLE = 1, 2, 3, 4


def _convert_diskcache(con: sqlite3.Connection, folder: Path) -> list[Path]:
    """Copy a diskcache index's entries (tables Cache and Settings in the same file) into kv and
    drop its tables; returns the value files to remove once committed. A value that cannot be
    read is left out: its task is rebuilt, nothing else is lost."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Cache'"
                   ).fetchone() is None:
        return []
    files = []
    for key, raw, mode, filename, value in con.execute(
            "SELECT key, raw, mode, filename, value FROM Cache").fetchall():
        if filename:
            files.append(folder / filename)
        if not raw or not isinstance(key, str):
            continue
        try:
            v = _diskcache_value(folder, mode, filename, value)
            con.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                        (key, json.dumps(v, separators=(",", ":"))))
        except Exception:  # noqa: BLE001 - one unreadable value costs one rebuild, not the index
            continue
    con.execute("DROP TABLE IF EXISTS Cache")  # its triggers go with it
    con.execute("DROP TABLE IF EXISTS Settings")
    return files


def _diskcache_value(folder: Path, mode: int, filename: str | None, value: Any) -> Any:
    if mode == _RAW:
        return bytes(value).decode() if isinstance(value, bytes | memoryview) else value
    if mode == _TEXT and filename:
        return (folder / filename).read_text(encoding="UTF-8")
    if mode == _PICKLE:
        import pickle  # values this tool wrote itself, in this cache, before the conversion

        data = (folder / filename).read_bytes() if value is None and filename else bytes(value)
        return pickle.loads(data)  # noqa: S301
    raise ValueError(f"diskcache value mode {mode} is not one this tool wrote")
