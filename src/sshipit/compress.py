"""Compressing the upload stream: which compression a host gets, and zstd whose level follows the link.

Owns choose_compression (auto: zstd where the server can unpack it, none on loopback), the adaptive zstd levels
(next_level) and the lean compressor settings of fleets; upload.py calls `compressor()` from its worker thread.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sshipit.remote import ServerTraits


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


def choose_compression(setting: str, traits: ServerTraits, local: bool = False) -> str:
    """`auto` is zstd when the server can unpack it, except to a server on this machine (`local`).

    Measured with bench/ (20,000 text files + 400 MB of media): on a 50 Mbit/s link zstd sends fewer bytes and
    finishes that much sooner (text alone: 3.7x smaller at level 1, 6.6x at 9; the level follows the link, see
    AdaptiveZstd); over loopback there is no link to save and compressing and unpacking cost 12-15% more
    time, so there it sends plain tar. zstd skips incompressible data at ~3 GB/s.
    """
    if setting == "auto":
        return "zstd" if "zstd" in traits.tools and not local and _has_zstandard() else "none"
    if setting != "none" and setting not in traits.tools:
        return "none"
    return setting


def _has_zstandard() -> bool:
    import importlib.util

    return importlib.util.find_spec("zstandard") is not None


ZSTD_LEVELS = (1, 3, 6, 9)
# Match tables of at most 2^20 entries: level 9's own (2^21) take 11 MB of compressor memory for 2% smaller text
# (measured on the benchmark's 98 MB of text: 14.75 MB against 15.24 MB at 2^20, with 5.8 MB of memory).
_TABLES_LOG = 20
# A fleet's streams (stream_chunk): each host has a compressor, and on a busy link every host climbs to level 9
# (4 MB window + tables: 500 hosts would hold 5 GB). There, a 256 KB window and 2^17 tables: < 1 MB a host.
_LEAN_WINDOW_LOG, _LEAN_TABLES_LOG = 18, 17
_DECIDE_EVERY = 1.0  # seconds between two looks at the link


def next_level(index: int, waiting_share: float) -> int:
    """The index in ZSTD_LEVELS for the next stretch of the stream.

    `waiting_share` is the part of the last stretch the worker spent waiting for the link to take its chunks.
    Mostly waiting (> 1/2): the link is the limit, and a stronger level costs no time (50 Mbit/s carries 6 MB/s;
    level 9 still compresses text at ~50 MB/s). Hardly waiting (< 1/10): compression is the limit, so step down.
    """
    if waiting_share > 0.5:
        return min(index + 1, len(ZSTD_LEVELS) - 1)
    if waiting_share < 0.1:
        return max(index - 1, 0)
    return index


class AdaptiveZstd:
    """zstd whose level follows the link (next_level). A change of level ends one zstd frame and starts the next:
    `zstd -d` reads concatenated frames as one stream."""

    def __init__(self, waited: Callable[[], float], levels: list[int], lean: bool = False) -> None:
        import zstandard

        self._zstd = zstandard
        self._lean = lean
        self._waited = waited
        self.levels = levels
        self._index = 0
        self.levels.append(ZSTD_LEVELS[0])
        self._frame = self._compressor(ZSTD_LEVELS[0])
        self._since, self._waited_before = time.monotonic(), 0.0

    def compress(self, data: bytes) -> bytes:
        out = self._frame.compress(data)
        now = time.monotonic()
        if now - self._since >= _DECIDE_EVERY:
            waited = self._waited()
            share = (waited - self._waited_before) / (now - self._since)
            self._since, self._waited_before = now, waited
            index = next_level(self._index, share)
            if index != self._index:
                out += self._frame.flush()  # ends this frame
                self._index = index
                self.levels.append(ZSTD_LEVELS[index])
                self._frame = self._compressor(ZSTD_LEVELS[index])
        return out

    def flush(self) -> bytes:
        return self._frame.flush()

    def _compressor(self, level: int) -> Any:
        params = self._zstd.ZstdCompressionParameters.from_level(level)
        if self._lean:
            params = self._zstd.ZstdCompressionParameters.from_level(
                level, window_log=min(params.window_log, _LEAN_WINDOW_LOG),
                chain_log=min(params.chain_log, _LEAN_TABLES_LOG), hash_log=min(params.hash_log, _LEAN_TABLES_LOG))
        elif params.chain_log > _TABLES_LOG or params.hash_log > _TABLES_LOG:
            params = self._zstd.ZstdCompressionParameters.from_level(
                level, chain_log=min(params.chain_log, _TABLES_LOG), hash_log=min(params.hash_log, _TABLES_LOG))
        return self._zstd.ZstdCompressor(compression_params=params).compressobj()


def new_compressor(kind: str, waited: Callable[[], float], levels: list[int], lean: bool = False) -> Compressor:
    """zstd (adaptive) or gzip: an uncompressed stream never reaches the worker thread (see stream)."""
    if kind == "zstd":
        return AdaptiveZstd(waited, levels, lean)
    return zlib.compressobj(1, zlib.DEFLATED, 31)
