"""Files live in PostgreSQL: a ``files`` row and its contents in ~1 MiB ``file_parts``.

Uploads and downloads move one part at a time, so a 200 MB file never sits in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import LargeBinary, bindparam, text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from app.vocabulary import FileStatus

PART_BYTES = 1024 * 1024
PARTS_PER_QUERY = 8

CREATE = text(
    "INSERT INTO files (id, owner_key_id, filename, purpose, status)"
    f" VALUES (:id, :owner, :filename, :purpose, '{FileStatus.UPLOADING}')"
)
ADD_PART = text(
    "INSERT INTO file_parts (file_id, part, data) VALUES (:id, :part, :data)"
).bindparams(bindparam("data", type_=LargeBinary))
SEAL = text("UPDATE files SET bytes = :bytes WHERE id = :id")
SEAL_PUBLISH = text(
    f"UPDATE files SET status = '{FileStatus.PROCESSED}', bytes = :bytes WHERE id = :id"
)
DISCARD = text("DELETE FROM files WHERE id = :id")
GET = text(
    "SELECT id, owner_key_id, filename, purpose, bytes, status, created_at, expires_at"
    f" FROM files WHERE id = :id AND owner_key_id = :owner AND status = '{FileStatus.PROCESSED}'"
)
# Newest first; ``after`` is the id of the last file of the previous page.
LIST = text(
    f"""
SELECT id, filename, purpose, bytes, status, created_at, expires_at FROM files
WHERE owner_key_id = :owner AND status = '{FileStatus.PROCESSED}'
  AND (CAST(:purpose AS text) IS NULL OR purpose = :purpose)
  AND (CAST(:after AS text) IS NULL OR (created_at, id) < (
        SELECT created_at, id FROM files WHERE id = :after AND owner_key_id = :owner))
ORDER BY created_at DESC, id DESC
LIMIT :limit
"""
)
DELETE = text("DELETE FROM files WHERE id = :id AND owner_key_id = :owner RETURNING id")
# Uploads that never finished (a crashed gateway, a crashed batch finalize) are invisible;
# after a while nobody can be writing them any more.
PRUNE_ABANDONED = text(
    f"DELETE FROM files WHERE status = '{FileStatus.UPLOADING}'"
    " AND created_at < now() - make_interval(secs => :older_than_s) RETURNING id"
)
PARTS = text(
    "SELECT part, data FROM file_parts WHERE file_id = :id AND part >= :first"
    " ORDER BY part LIMIT :n"
)


@dataclass
class FileWriter:
    """Accumulates bytes and stores them part by part."""

    store: FileStore
    id: str
    size: int = 0
    _part: int = 0
    _buffer: bytearray | None = None

    async def write(self, data: bytes) -> None:
        buffer = self._buffer if self._buffer is not None else bytearray()
        buffer += data
        self.size += len(data)
        while len(buffer) >= PART_BYTES:
            await self._flush(bytes(buffer[:PART_BYTES]))
            del buffer[:PART_BYTES]
        self._buffer = buffer

    async def close(self, *, publish: bool = True) -> None:
        """Store the last part; make the file visible unless someone else will
        (``publish=False``: batch results appear together with their batch's end)."""
        if self._buffer:
            await self._flush(bytes(self._buffer))
            self._buffer = None
        async with self.store.engine.connect() as conn:
            await conn.execute(
                SEAL_PUBLISH if publish else SEAL, {"id": self.id, "bytes": self.size}
            )

    async def _flush(self, data: bytes) -> None:
        async with self.store.engine.connect() as conn:
            await conn.execute(ADD_PART, {"id": self.id, "part": self._part, "data": data})
        self._part += 1


class FileStore:
    """SQL for ``files`` and ``file_parts``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, *, id: str, owner: str, filename: str, purpose: str) -> FileWriter:
        """A new, still invisible file; write to it, then ``close()`` it."""
        async with self.engine.connect() as conn:
            await conn.execute(
                CREATE, {"id": id, "owner": owner, "filename": filename, "purpose": purpose}
            )
        return FileWriter(self, id)

    async def get(self, id: str, owner: str) -> RowMapping | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(GET, {"id": id, "owner": owner})).mappings().first()

    async def page(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int
    ) -> list[RowMapping]:
        params = {"owner": owner, "purpose": purpose, "after": after, "limit": limit}
        async with self.engine.connect() as conn:
            return list((await conn.execute(LIST, params)).mappings())

    async def delete(self, id: str, owner: str) -> bool:
        async with self.engine.connect() as conn:
            return (await conn.execute(DELETE, {"id": id, "owner": owner})).first() is not None

    async def discard(self, id: str) -> None:
        """Remove a file nobody will see (an empty or superseded batch result)."""
        async with self.engine.connect() as conn:
            await conn.execute(DISCARD, {"id": id})

    async def prune_abandoned(self, older_than_s: int) -> list[str]:
        """Delete files left half-written for longer than ``older_than_s`` seconds."""
        async with self.engine.connect() as conn:
            return list(
                (await conn.execute(PRUNE_ABANDONED, {"older_than_s": older_than_s})).scalars()
            )

    async def chunks(self, id: str) -> AsyncIterator[bytes]:
        """The file's bytes, a few parts per query."""
        first = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(PARTS, {"id": id, "first": first, "n": PARTS_PER_QUERY})
                ).all()
            for row in rows:
                yield row.data
            if len(rows) < PARTS_PER_QUERY:
                return
            first = rows[-1].part + 1

    async def lines(self, id: str) -> AsyncIterator[bytes]:
        """The file's lines (without their newline), streamed across part boundaries."""
        tail = b""
        async for chunk in self.chunks(id):
            pieces = (tail + chunk).split(b"\n")
            tail = pieces.pop()
            for piece in pieces:
                yield piece
        if tail:
            yield tail
