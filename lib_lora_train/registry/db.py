"""Open the registry's SQLite file safely and bring its schema up to date.

The WebUI and the command line may use the registry at the same time, so the database runs
in WAL mode (readers never block the writer), every write takes the write lock up front
(``BEGIN IMMEDIATE``: a deferred transaction that later needs to write fails at once with
"database is locked" in WAL mode instead of waiting) and ``busy_timeout`` makes a second
writer wait instead of failing.

The schema is a list of named, ordered migrations recorded in the ``_migrations`` table, as
sqlite-utils' ``migrations.py`` does. Our files carry a marker in the SQLite header
(``PRAGMA application_id``) and the schema version (``PRAGMA user_version``). A file that is
not SQLite, another program's database, or a database written by a newer medical-lora is
refused with :class:`RegistryCorruptError` before anything is written to it.
"""

import contextlib
import dataclasses
import datetime
import logging
import pathlib
import secrets
import sqlite3
import time

from .errors import RegistryCorruptError, RegistryError

logger = logging.getLogger(__name__)

# "MLRG" as a big-endian 32-bit integer: the marker of a medical-lora registry
# (https://www.sqlite.org/pragma.html#pragma_application_id).
APPLICATION_ID = 0x4D4C5247
SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_TIMEOUT_S = 30.0
ADAPTER_STATUSES = ("active", "deleting", "deleted", "expired")


@dataclasses.dataclass(frozen=True)
class Migration:
    """One schema step: a stable name and the statements that make it (no ``executescript``,
    which would commit the surrounding transaction)."""

    name: str
    statements: tuple


MIGRATIONS = (
    Migration("0001_adapters", (
        f"""CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            file_path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            copies_json TEXT NOT NULL DEFAULT '[]',
            base_fingerprint TEXT NOT NULL,
            config_json TEXT NOT NULL,
            config_digest TEXT NOT NULL,
            num_images INTEGER NOT NULL,
            dataset_id TEXT NOT NULL,
            dataset_path TEXT,
            data_source TEXT NOT NULL,
            purpose TEXT NOT NULL,
            legal_basis TEXT NOT NULL,
            dpia_reference TEXT NOT NULL,
            deid_profile TEXT NOT NULL,
            deid_version TEXT NOT NULL,
            department TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            last_used_at TEXT,
            status TEXT NOT NULL DEFAULT 'active' CHECK (status IN {ADAPTER_STATUSES}),
            deleted_at TEXT,
            deleted_by TEXT,
            deleted_reason TEXT
        )""",
        # The alias must be unique among adapters that still exist; deleted names may be reused.
        "CREATE UNIQUE INDEX adapters_live_name ON adapters (name) WHERE status IN ('active', 'deleting')",
        "CREATE INDEX adapters_status ON adapters (status)",
        "CREATE INDEX adapters_dataset ON adapters (dataset_id)",
    )),
    Migration("0002_lineage", (
        """CREATE TABLE adapter_patients (
            adapter_id TEXT NOT NULL REFERENCES adapters (id),
            patient TEXT NOT NULL,
            PRIMARY KEY (adapter_id, patient)
        )""",
        "CREATE INDEX adapter_patients_patient ON adapter_patients (patient)",
        """CREATE TABLE adapter_studies (
            adapter_id TEXT NOT NULL REFERENCES adapters (id),
            study TEXT NOT NULL,
            PRIMARY KEY (adapter_id, study)
        )""",
        "CREATE INDEX adapter_studies_study ON adapter_studies (study)",
    )),
    Migration("0003_erasure", (
        # The plan is written before any file is removed, so an interrupted erasure can resume;
        # the receipt is written in the same transaction that marks the row deleted.
        "ALTER TABLE adapters ADD COLUMN erasure_plan_json TEXT",
        "ALTER TABLE adapters ADD COLUMN receipt_json TEXT",
        """CREATE TABLE erasures (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            receipt_json TEXT NOT NULL
        )""",
    )),
)


def connect(path, timeout=DEFAULT_TIMEOUT_S, migrations=MIGRATIONS):
    """Open (creating if needed) the registry at ``path`` and apply pending migrations.

    Args:
        path (`str | os.PathLike`): the SQLite file; its folder must exist.
        timeout (`float`): seconds a writer waits for another writer before giving up.
        migrations (`tuple[Migration, ...]`): the schema, in order (tests pass extra steps).

    Returns:
        `sqlite3.Connection`: in autocommit mode; group writes with :func:`transaction`.

    Raises:
        RegistryCorruptError: the file is not a registry of this or an older version; it is
            left exactly as it was.
    """
    path = pathlib.Path(path)
    _check_header(path)
    try:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise RegistryError(f"cannot open the registry {path} ({exc}); check that its folder exists and is "
                            "writable") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        _check_marker(conn, path, migrations)
        _enable_wal(conn, timeout)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path, migrations)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RegistryCorruptError(
            f"the registry {path} cannot be read as a database ({exc}); it was left unchanged. "
            "Restore it from backup or move it away to start a new registry"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn):
    """Run the block as one transaction holding the write lock; roll back on any exception.

    Nested use becomes a savepoint, so helpers can group their own writes and still take part
    in a caller's transaction (as sqlite-utils ``Database.atomic``). The connection's own
    ``with conn:`` is not enough: in autocommit mode it begins no transaction.
    """
    if conn.in_transaction:
        savepoint = f"sp_{secrets.token_hex(4)}"
        conn.execute(f"SAVEPOINT {savepoint}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
            raise
        conn.execute(f"RELEASE {savepoint}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn, path, migrations=MIGRATIONS):
    """Apply the migrations not yet recorded, in one transaction; returns their names."""
    if _pragma(conn, "application_id") == APPLICATION_ID and _pragma(conn, "user_version") == len(migrations):
        return []
    with transaction(conn):
        _check_marker(conn, path, migrations)  # another process may have migrated meanwhile
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = applied_migrations(conn)
        pending = migrations[len(done):]
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for migration in pending:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (migration.name, now))
            logger.info("registry migration %s applied", migration.name)
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    return [migration.name for migration in pending]


def applied_migrations(conn):
    """Names of the recorded migrations, in the order they were applied."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def _check_header(path):
    if path.exists() and not path.is_file():
        raise RegistryCorruptError(f"the registry path {path} exists but is not a file; move it away")
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        magic = handle.read(len(SQLITE_MAGIC))
    if magic != SQLITE_MAGIC:
        raise RegistryCorruptError(
            f"the registry {path} is not an SQLite database (unknown file header); it was left unchanged. "
            "Restore it from backup, or move it away to start a new, empty registry"
        )


def _check_marker(conn, path, migrations):
    """Refuse a foreign or newer database using reads only (nothing may be written to it).

    The reads share one transaction: another process may finish creating the schema between
    two separate statements.
    """
    with _read_snapshot(conn):
        app_id, version = _pragma(conn, "application_id"), _pragma(conn, "user_version")
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        done = applied_migrations(conn)
    if app_id == 0 and tables == 0:
        return  # a new, empty file
    if app_id != APPLICATION_ID:
        raise RegistryCorruptError(
            f"the registry {path} is an SQLite database of another program (application_id {app_id:#x}, "
            f"expected {APPLICATION_ID:#x}); it was left unchanged. Move it away or choose another data home"
        )
    if version > len(migrations):
        raise RegistryCorruptError(
            f"the registry {path} has schema version {version}, newer than this medical-lora knows "
            f"({len(migrations)}); it was left unchanged. Upgrade medical-lora to use it"
        )
    known = [migration.name for migration in migrations]
    if done != known[:len(done)]:
        unknown = [name for name in done if name not in known]
        raise RegistryCorruptError(
            f"the registry {path} records migrations this medical-lora does not know "
            f"({', '.join(unknown) or 'out of order'}); it was left unchanged. Upgrade medical-lora or restore the "
            "file from backup"
        )


@contextlib.contextmanager
def _read_snapshot(conn):
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _enable_wal(conn, timeout):
    """Switch to WAL (a persistent setting). The switch needs an exclusive lock and SQLite may
    report "database is locked" at once, without waiting, while another process opens the same
    new file; so it is retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    if str(mode).lower() != "wal":
        # e.g. a network file system without shared memory: still correct, but writers block readers.
        logger.warning("the registry cannot use WAL mode here (journal_mode=%s); concurrent use will be slower", mode)


def _pragma(conn, name):
    return conn.execute(f"PRAGMA {name}").fetchone()[0]
