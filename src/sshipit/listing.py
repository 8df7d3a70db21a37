"""Reading a server's listing and manifest as they arrive (remote.probe_then's reader), for fleets.

Owns the streamed side of manifest.parse_server: each host keeps the listings it receives, and compares its
manifest text, byte for byte as it comes, with the text of the first host that started receiving one (the
leader's, held once). A host keeps only what it has received beyond the leader's so far, and its own copy once
its text differs (then, as before, one per host). Nothing is taken on a server's word: a host's text is exactly
the bytes its server sent, parsed as strictly (manifest.Manifest.parse); equal bytes share the leader's parse.
"""

from __future__ import annotations

from sshipit.manifest import _LEADER, _SEP, Manifest, ServerView, _Lead, _view, parse_server, parse_shared

_AHEAD_LIMIT = 256 << 10  # a host this far ahead of the leader (which stalled, or ended) keeps its own copy


class ListingReader:
    """The output of `server_script`, decompressed, as it arrives (remote.probe_then's reader): the listings kept
    as they come, the manifest text in a ManifestText."""

    def __init__(self) -> None:
        self.head = bytearray()  # up to the third separator: the listings
        self.seps = 0
        self.scan = 0  # where to look for the next separator
        self.text: ManifestText | None = None
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.text is not None:
            self.text.feed(data)
            return
        self.head += data
        sep = _SEP.encode()
        while self.seps < 3:
            at = self.head.find(sep, self.scan)
            if at < 0:
                self.scan = max(self.scan, len(self.head) - len(sep) + 1)
                return
            self.seps += 1
            self.scan = at + len(sep)
        rest = bytes(self.head[self.scan:])
        del self.head[self.scan:]
        self.text = ManifestText()
        self.text.feed(rest)

    def fail(self) -> None:
        self.broken = True

    def view(self, exit_status: int | None) -> ServerView:
        """The ServerView, as parse_server gives it for the same bytes (a damaged stream alike)."""
        if self.broken:
            return parse_server(b"", exit_status, False)
        text = self.head.decode("utf-8", "surrogateescape")  # the listings (see parse_server)
        self.head = bytearray()
        return _view(text, exit_status, self.text.parsed if self.text is not None else None)


class ManifestText:
    """One host's manifest text as it arrives, held only where it differs from the leader's (see _LEADER)."""

    def __init__(self) -> None:
        self.leads = not _LEADER
        if self.leads:
            _LEADER.append(_Lead())
        self.lead = _LEADER[0]
        self.matched = 0  # bytes equal to the leader's
        self.ahead = bytearray()  # received, not yet compared (the leader has not had them yet)
        self.own: bytearray | None = None  # this host's whole text, once it differs

    def feed(self, data: bytes) -> None:
        if self.leads:
            self.lead.text += data
        elif self.own is not None:
            self.own += data
        else:
            self.ahead += data
            self._compare()

    def _compare(self) -> None:
        ref = self.lead.text
        n = min(len(self.ahead), len(ref) - self.matched)
        if n > 0 and ref[self.matched:self.matched + n] == self.ahead[:n]:
            self.matched += n
            del self.ahead[:n]
        elif n > 0 or len(self.ahead) > _AHEAD_LIMIT or (self.lead.done and self.ahead):
            self.own = ref[:self.matched] + self.ahead
            self.ahead = bytearray()

    def parsed(self) -> tuple[Manifest | None, str]:
        """The manifest (parse_shared's answer) once all of it came: the leader's, when this text is the same."""
        if self.leads:
            self.lead.done = True
            self.lead.result = _parse_text(self.lead.text)
            return self.lead.result
        if self.own is None:
            self._compare()
        if self.own is None and not self.ahead and self.lead.result is not None \
                and self.matched == len(self.lead.text):
            return self.lead.result  # byte for byte the leader's text: its parse, not a second copy
        return _parse_text(self.own if self.own is not None else self.lead.text[:self.matched] + self.ahead)


def _parse_text(data: bytearray) -> tuple[Manifest | None, str]:
    text = data.decode("utf-8", "surrogateescape")
    return parse_shared(text) if text.strip() else (None, "")
