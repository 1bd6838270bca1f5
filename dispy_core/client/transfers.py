"""Streaming a file to a node or scheduler: in chunks, acknowledged at the end or refused early.

A receiver refuses a file (too big, a path that escapes, a disk error) at the first chunk it cannot take; the
refusal arrives while later chunks are on their way, so the sender checks for it between chunks and stops
sending at once instead of streaming the rest of a large file for nothing.
"""

from __future__ import annotations

from dispy_core.channel import Channel
from dispy_core.client.computation import FileDepend
from dispy_core.errors import DispyError
from dispy_core.protocol import messages as m

__all__ = ["FILE_CHUNK", "stream_file"]

FILE_CHUNK = 4 << 20


async def stream_file(channel: Channel, dep: FileDepend, comp_id: str, job_uid: int, refusals: dict[int, str],
                      timeout: float) -> None:
    """Send ``dep`` for computation ``comp_id`` (and job ``job_uid``, 0 for the computation's own files).

    ``refusals`` is where the connection's reader puts an early refusal, by request id. DispyError names the
    file and the receiver's reason.
    """
    req_id = channel.next_req_id()
    try:
        with open(dep.path, "rb") as handle:
            offset = 0
            while True:
                data = handle.read(FILE_CHUNK)
                last = offset + len(data) >= dep.size
                msg = m.FileChunk(req_id, comp_id, dep.relpath, dep.size, offset, data, last=last,
                                  job_uid=job_uid, mode=dep.mode)
                if last:
                    reply = await channel.request(msg, timeout)
                    assert isinstance(reply, m.FileAck)
                    if not reply.ok:
                        reason = refusals.get(req_id) or reply.error
                        raise DispyError(f"node refused file {dep.relpath!r}: {reason}")
                    return
                await channel.send(msg)
                offset += len(data)
                if req_id in refusals:
                    raise DispyError(f"node refused file {dep.relpath!r}: {refusals[req_id]}")
    finally:
        refusals.pop(req_id, None)
