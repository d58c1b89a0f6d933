"""URLs as llmos shows them."""

from __future__ import annotations


def redacted(url: str) -> str:
    """A URL without the password in it ("postgresql://user:secret@host/db" -> "postgresql://user@host/db")."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}{at}{host}" if at else url
