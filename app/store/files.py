"""Files live in PostgreSQL: a ``files`` row and its contents in ~1 MiB ``file_parts``.

Uploads and downloads move one part at a time, so a 200 MB file never sits in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import LargeBinary, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.rows import FromRow
from app.vocabulary import FileStatus

PART_BYTES = 1024 * 1024
PARTS_PER_QUERY = 8

CREATE = text(
    "INSERT INTO files (id, owner_key_id, filename, purpose, status, expires_at)"
    f" VALUES (:id, :owner, :filename, :purpose, '{FileStatus.UPLOADING}',"
    " now() + CAST(:expires_s AS integer) * interval '1 second')"
)
ADD_PART = text(
    "INSERT INTO file_parts (file_id, part, data) VALUES (:id, :part, :data)"
).bindparams(bindparam("data", type_=LargeBinary))
SEAL = text("UPDATE files SET bytes = :bytes WHERE id = :id")
SEAL_PUBLISH = text(
    f"UPDATE files SET status = '{FileStatus.PROCESSED}', bytes = :bytes WHERE id = :id"
)
DISCARD = text("DELETE FROM files WHERE id = :id")
# What a key sees: its processed files whose expiry (if any) has not passed; an expired file
# is gone for its owner at once, before the workers' sweep deletes it.
VISIBLE = (
    f"owner_key_id = :owner AND status = '{FileStatus.PROCESSED}'"
    " AND (expires_at IS NULL OR expires_at > now())"
)
GET = text(
    "SELECT id, owner_key_id, filename, purpose, bytes, status, created_at, expires_at"
    f" FROM files WHERE id = :id AND {VISIBLE}"
)
# ``after`` is the id of the last file of the previous page, in the same order.
LIST = {
    order: text(
        f"""
SELECT id, filename, purpose, bytes, status, created_at, expires_at FROM files
WHERE {VISIBLE}
  AND (CAST(:purpose AS text) IS NULL OR purpose = :purpose)
  AND (CAST(:after AS text) IS NULL OR (created_at, id) {cmp} (
        SELECT created_at, id FROM files WHERE id = :after AND owner_key_id = :owner))
ORDER BY created_at {order}, id {order}
LIMIT :limit
"""
    )
    for order, cmp in (("desc", "<"), ("asc", ">"))
}
DELETE = text(f"DELETE FROM files WHERE id = :id AND {VISIBLE} RETURNING id")
# The owner's delete of a file not yet processed (an upload that failed half-way).
DROP_UPLOAD = text("DELETE FROM files WHERE id = :id AND owner_key_id = :owner")
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


@dataclass(frozen=True, slots=True)
class FileRow(FromRow):
    """A stored file as its owner reads it (``FileStore.get``, ``page``)."""

    id: str
    filename: str
    purpose: str
    bytes: int
    status: str
    created_at: dt.datetime
    expires_at: dt.datetime | None


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

    async def create(
        self, *, id: str, owner: str, filename: str, purpose: str, expires_s: int | None = None
    ) -> FileWriter:
        """A new, still invisible file; write to it, then ``close()`` it. It expires
        ``expires_s`` seconds after its creation (never if None)."""
        params = {
            "id": id,
            "owner": owner,
            "filename": filename,
            "purpose": purpose,
            "expires_s": expires_s,
        }
        async with self.engine.connect() as conn:
            await conn.execute(CREATE, params)
        return FileWriter(self, id)

    async def get(self, id: str, owner: str) -> FileRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(GET, {"id": id, "owner": owner})).mappings().first()
        return None if row is None else FileRow.from_row(row)

    async def page(
        self,
        owner: str,
        *,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"] = "desc",
    ) -> list[FileRow]:
        """A page of the owner's files by creation time (``desc``: newest first)."""
        params = {"owner": owner, "purpose": purpose, "after": after, "limit": limit}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(LIST[order], params)).mappings()
            return [FileRow.from_row(row) for row in rows]

    async def delete(self, id: str, owner: str) -> bool:
        """Delete a file its owner can see; False if there is none (expired ones included)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(DELETE, {"id": id, "owner": owner})).first() is not None

    async def drop_upload(self, id: str, owner: str) -> None:
        """Delete an upload that failed before it was processed."""
        async with self.engine.connect() as conn:
            await conn.execute(DROP_UPLOAD, {"id": id, "owner": owner})

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
