"""Pure logic of the upload stream: hand-built tar headers, the compression choice, the content hash.

The stream itself is checked end to end against real servers (test_deploy, test_incremental); these pin the
pieces that were rewritten for speed to what the standard library would produce.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import blake3
from hypothesis import given
from hypothesis import strategies as st

from sshipit.compress import ZSTD_LEVELS, choose_compression, next_level
from sshipit.manifest import HASH, Manifest, file_hash, forget_local_hashes, local_hash
from sshipit.remote import ServerTraits
from sshipit.sources import Entry
from sshipit.transport import _Coalescing
from sshipit.upload import _tarfile_header, tar_header

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1, max_size=60)
paths = st.lists(names, min_size=1, max_size=4).map("/".join)


def parsed(header: bytes) -> tuple[object, ...]:
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")  # checks the checksum too
    return info.name, info.mode, info.size, info.mtime, info.type, info.linkname, info.uid, info.gid


@given(paths, st.sampled_from(["file", "dir", "symlink"]), st.integers(0, 0o7777),
       st.integers(0, 8**11 + 5), st.integers(0, 8**11 + 5), paths)
def test_fast_header_reads_back_as_tarfile_writes_it(
    name: str, kind: str, mode: int, size: int, mtime: int, link: str
) -> None:
    entry = Entry("/nowhere", name, kind, mode, mtime, size if kind == "file" else 0,  # type: ignore[arg-type]
                  link if kind == "symlink" else "")
    ours, reference = tar_header(entry), _tarfile_header(entry)
    if len(ours) == 512 and len(reference) == 512:
        assert parsed(ours) == parsed(reference)
    else:  # long names and large numbers take tarfile's path, GNU extension headers included
        assert ours == reference


def test_fast_header_is_used_and_unpacks_with_tarfile() -> None:
    entries = [Entry("/x", "dir", "dir", 0o750, 1_700_000_000),
               Entry("/x", "dir/a.txt", "file", 0o640, 1_700_000_001, 3),
               Entry("/x", "dir/link", "symlink", 0o777, 1_700_000_002, link="a.txt")]
    stream = io.BytesIO()
    for entry in entries:
        stream.write(tar_header(entry))
        if entry.kind == "file":
            stream.write(b"abc" + b"\0" * 509)
    stream.write(b"\0" * 1024)
    stream.seek(0)
    with tarfile.open(fileobj=stream) as archive:
        members = {m.name: (m.type, m.mode, m.mtime, m.size, m.linkname) for m in archive.getmembers()}
    assert members == {
        "dir": (tarfile.DIRTYPE, 0o750, 1_700_000_000, 0, ""),
        "dir/a.txt": (tarfile.REGTYPE, 0o640, 1_700_000_001, 3, ""),
        "dir/link": (tarfile.SYMTYPE, 0o777, 1_700_000_002, 0, "a.txt"),
    }


def test_auto_compression_depends_on_the_link_and_the_server() -> None:
    both = ServerTraits(shell=True, tar="gnu", tools=frozenset({"zstd", "gzip"}))
    gzip_only = ServerTraits(shell=True, tar="gnu", tools=frozenset({"gzip"}))
    assert choose_compression("auto", both, local=False) == "zstd"
    assert choose_compression("auto", both, local=True) == "none"  # loopback: no link to save
    assert choose_compression("auto", gzip_only, local=False) == "none"
    assert choose_compression("zstd", both, local=True) == "zstd"  # asked for: done, even on loopback
    assert choose_compression("gzip", both, local=True) == "gzip"
    assert choose_compression("zstd", gzip_only) == "none"  # the server could not unpack it


def test_content_hash_is_blake3_and_recorded_in_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello" * 100_000)
    assert file_hash(str(path)) == blake3.blake3(b"hello" * 100_000).hexdigest()
    manifest = Manifest(files={"f.bin": (500_000, 0o644, file_hash(str(path)))})
    text = manifest.dumps()
    assert f'"hash":"{HASH}"' in text and Manifest.loads(text) == manifest
    # A manifest from another hash (an older sshipit: SHA-256) is no manifest: a full upload, never a wrong one.
    assert Manifest.loads(text.replace(f'"hash":"{HASH}"', '"hash":"sha256"')) is None
    assert Manifest.loads('{"version":1,"files":{},"links":{}}') is None


def test_local_hashes_are_shared_within_one_deploy_only(tmp_path: Path) -> None:
    """Hosts of one deploy share each local file's hash (computed once); deploy() forgets them at its start."""
    path = tmp_path / "f.txt"
    path.write_text("one\n")
    entry = Entry(str(path), "f.txt", "file", 0o644, 0, 4)
    forget_local_hashes()
    first = local_hash(entry)
    assert first == file_hash(str(path))
    path.write_text("two\n")  # not during a real deploy; here it shows that the second host would not re-read it
    assert local_hash(entry) == first
    forget_local_hashes()
    assert local_hash(entry) == file_hash(str(path)) != first


class _RecordingTransport:
    """Stands in for the socket under the coalescing layer: it records each write (one send() each)."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sends.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 22) if name == "peername" else None


def test_writes_of_one_loop_turn_leave_in_one_send_in_order() -> None:
    async def scenario() -> _RecordingTransport:
        raw = _RecordingTransport()
        wrapped = _Coalescing(raw)  # type: ignore[arg-type]
        for n in range(16):  # a 256 KiB channel write: 8 data packets, each after an ignore packet
            wrapped.write(b"i%d," % n)
            wrapped.write(b"d%d;" % n)
        assert raw.sends == [] and wrapped.get_write_buffer_size() == sum(len(b"i%d,d%d;" % (n, n)) for n in range(16))
        await asyncio.sleep(0)
        assert raw.sends == [b"".join(b"i%d,d%d;" % (n, n) for n in range(16))]
        wrapped.write(b"bye")
        wrapped.close()  # flushed before the socket closes: a disconnect message is not lost
        assert raw.sends[-1] == b"bye" and raw.closed
        assert wrapped.get_extra_info("peername") == ("127.0.0.1", 22)
        return raw

    assert len(asyncio.run(scenario()).sends) == 2


def test_zstd_level_follows_how_long_the_worker_waited_for_the_link() -> None:
    assert ZSTD_LEVELS[0] == 1 and ZSTD_LEVELS[-1] <= 9  # beyond 9 the compressor alone needs ~45 MB
    assert next_level(0, 0.9) == 1 and next_level(1, 0.6) == 2  # the link is the limit: stronger, for free
    assert next_level(len(ZSTD_LEVELS) - 1, 1.0) == len(ZSTD_LEVELS) - 1
    assert next_level(2, 0.05) == 1 and next_level(0, 0.0) == 0  # compressing is the limit: lighter
    assert next_level(2, 0.3) == 2  # in between: stay
