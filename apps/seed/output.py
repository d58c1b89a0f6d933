"""Showing a reply to the user as it is generated."""

from __future__ import annotations

from llmos.syscalls import Sys, TextStream


async def show(sys: Sys, stream: TextStream) -> str:
    """Write the stream's pieces to the user as they come (leading blanks dropped), end the
    line, and return the whole text, stripped."""
    started = False
    async for piece in stream:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            await sys.write(piece)
    await sys.write("\n")
    assert stream.reply is not None
    return stream.reply.text.strip()
