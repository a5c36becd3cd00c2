"""Text of a file users wrote on any system: UTF-8 (BOM removed), else cp1252, else latin-1.

List files, DataSpecs and the DataSpec builder's mapping CSV come from Windows tools as often as
not. cp1252 comes before latin-1 because a Windows file's curly quotes and dashes are cp1252;
latin-1 decodes any bytes, so a file is always read. The users' original DataSpec reader tried
utf-8, utf-8-sig, cp1252, latin-1: utf-8-sig succeeds exactly when utf-8 does (the BOM is
stripped here), so this chain reads every file it read, the same way.
"""

from __future__ import annotations

ENCODINGS = ("utf-8", "cp1252", "latin-1")


def decode_user_text(raw: bytes) -> str:
    """The first of ENCODINGS that decodes `raw` strictly, without a leading BOM."""
    for encoding in ENCODINGS[:-1]:
        try:
            return raw.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
    return raw.decode(ENCODINGS[-1])
