"""The copy check (sample.py -check_copy): how much of a generated sample occurs verbatim in the training text.

A sample and a corpus are sequences of tokens: the code points of a str, the bytes of a bytes
object (the two compare by value, so a str of chr(byte) tokens, as a byte vocabulary spells its
tokens, matches the bytes it stands for). `Corpus(text)` indexes the corpus once; `check(sample)`
then reports the longest passage of the sample that occurs in the corpus, where, and the share of
the sample's tokens that lie inside copied passages of `min_copy` (default 20) tokens or more.

Method: polynomial rolling hashes mod 2^32, vectorised with numpy, and every hash hit confirmed by
comparing the tokens themselves, so a result never rests on a hash alone. 2^32 rather than 2^64:
the index is half the size and uint32 arithmetic is faster, while a false hit, rarer than one in
2^32 lookups for ordinary text, costs only a comparison.

- Index (`Corpus.__init__`): the tokens (uint8, uint16 or uint32, the narrowest that holds them,
  as a str stores itself) and the prefix hashes P[i] = sum over j < i of t[j]·B^(i-1-j), computed in
  chunks of CHUNK tokens as B^(k-1)·cumsum(t·B^-j) (B is odd, hence invertible mod 2^32). The
  window [i, i+L) then hashes to P[i+L] - P[i]·B^L: two operations per corpus position for any L.
  The index costs 4 bytes a token beside the tokens; everything else is a chunk at a time.
- The sample's windows of length L are grouped into classes of equal content exactly, without
  hashes: by Karp, Miller and Rosenberg's doubling ranks (the rank of each window of length 2^k,
  from the ranks of its halves), a window of any length being equal to another exactly when the two
  power-of-two windows covering each are.
- A scan at length L: the classes are looked up for each chunk of corpus windows, first in a table
  of their hashes' top TABLE_BITS bits (one gather per position), then by np.searchsorted among the
  sorted class hashes for the few that pass; each hash match is then compared token by token, the
  earliest per class first. A scan either finds each class's first occurrence (classes found drop
  out of the table) or stops at the first chunk where any class occurs.
- The copied share: one scan at L = min_copy. A token is inside a copied passage of >= min_copy
  tokens exactly when some window of length min_copy covering it occurs.
- The longest passage: a binary search over L, one stopping scan per step (a passage of length L
  occurs only if one of length L - 1 does). When windows of length min_copy occur, the search runs
  from min_copy up to the longest run of consecutive occurring windows (plus min_copy - 1), that
  upper bound tried first, and each step looks up only the sample positions where such a run is long
  enough, since a passage occurs only if all its windows of length min_copy do.

Python loops run over chunks, search steps and doubling levels, never over the corpus's tokens.
Reported is, of the longest passages, the one that occurs first in the corpus.
"""
import codecs
from dataclasses import dataclass

import numpy as np

from util.errors import UserError
from util.files import open_regular
from util.vocab import BYTES, check_text_encoding, has_utf8_bom

COPY_LENGTH = 20
"""The default min_copy: the issue's "copied passages of 20+ characters"."""

BASE = 0x9E3779B1
"""The hash's base (odd, so invertible mod 2^32); read when a Corpus is built."""

CHUNK = 1 << 16
"""Tokens handled per numpy step, which bounds the temporaries; read when a Corpus is built."""

TABLE_BITS = 20
"""The pre-filter's size: 2^20 flags (1 MiB, small enough to stay in cache), indexed by a hash's top bits."""

MODULUS = 1 << 32
ROW_ELEMENTS = 1 << 22  # token pairs compared per numpy step when confirming matches
PASSAGE_SHOWN = 60  # characters of the passage report_line shows


@dataclass(frozen=True)
class CopyReport:
    sample_length: int  # tokens in the sample checked
    longest: int  # length of the longest passage of the sample that occurs verbatim in the corpus (0 if none)
    sample_offset: int  # 0-based token index in the sample where that passage starts (0 when longest == 0)
    corpus_offset: int  # 0-based token index in the corpus where its first occurrence starts (0 when longest == 0)
    corpus_line: int  # 1-based line number in the corpus of that occurrence (0 when longest == 0)
    passage: str  # the passage itself (for a byte corpus: its bytes decoded utf-8 with errors="replace")
    copied_share: float  # share (0..1) of the sample's tokens inside copied passages of >= min_copy tokens
    min_copy: int = COPY_LENGTH  # the length copied_share counts from, so that report_line can name it


@dataclass(frozen=True)
class _Classes:
    """A sample's windows of one length grouped by content: the classes sorted by hash (classes whose
    hashes collide share one), each with its first sample position, and each window's class."""
    hashes: np.ndarray
    starts: np.ndarray
    of_window: np.ndarray


class _Sample:
    """A sample's tokens, its prefix hashes, and the ranks that tell its windows' contents apart."""

    def __init__(self, tokens: np.ndarray, base: int, chunk: int) -> None:
        self.tokens, self.base = tokens, base
        self.prefix = _prefix_hashes(tokens, base, chunk)
        self.ranks = _doubling_ranks(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def hashes(self, length: int, starts: np.ndarray) -> np.ndarray:
        """The hashes of the windows [s, s + length) for s in starts."""
        return self.prefix[starts + length] - self.prefix[starts] * np.uint32(pow(self.base, length, MODULUS))

    def classes(self, length: int, starts: np.ndarray) -> _Classes:
        """The windows [s, s + length) for s in starts (ascending), grouped by content: two windows
        are equal exactly when the two windows of a power-of-two length that cover each (from its
        start, and ending at its end) are, which their ranks say."""
        level = length.bit_length() - 1
        ranks, tail = self.ranks[level].astype(np.int64), length - (1 << level)
        keys = ranks[starts] * (len(self) + 1) + ranks[starts + tail]
        _, first, of_window = np.unique(keys, return_index=True, return_inverse=True)
        hashes = self.hashes(length, starts[first])
        order = np.argsort(hashes, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return _Classes(hashes[order], starts[first][order], rank[of_window.ravel()])


def _doubling_ranks(tokens: np.ndarray) -> list[np.ndarray]:
    """ranks[k][s]: the rank of the window [s, s + 2^k) among the sample's windows of that length,
    equal for equal contents (Karp, Miller and Rosenberg's doubling: a window of 2^k is the pair of
    its two halves' ranks)."""
    ranks = [np.unique(tokens, return_inverse=True)[1].ravel().astype(np.int32)]
    width = 1
    while 2 * width <= len(tokens):
        halves = ranks[-1].astype(np.int64)
        pairs = halves[:-width] * (len(tokens) + 1) + halves[width:]
        ranks.append(np.unique(pairs, return_inverse=True)[1].ravel().astype(np.int32))
        width *= 2
    return ranks


def _tokens(text: str | bytes) -> np.ndarray:
    """The text's tokens in the narrowest unsigned type that holds them (as a str stores itself)."""
    if isinstance(text, bytes):
        return np.frombuffer(text, dtype=np.uint8)
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    narrow = text.encode("utf-16-le", "surrogatepass")
    if len(narrow) == 2 * len(text):  # no code point above U+FFFF: one UTF-16 unit each
        return np.frombuffer(narrow, dtype="<u2")
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _powers(base: int, count: int) -> np.ndarray:
    """base^0 .. base^(count-1) mod 2^32."""
    factors = np.full(count, base, dtype=np.uint32)
    factors[0] = 1
    return np.cumprod(factors, dtype=np.uint32)


def _prefix_hashes(tokens: np.ndarray, base: int, chunk: int) -> np.ndarray:
    """P[i] = sum over j < i of tokens[j]·base^(i-1-j) mod 2^32, a chunk at a time. Within a chunk
    starting at a, P[a+k] = P[a]·B^k + B^(k-1)·cumsum(t·B^-j): cumulative sums instead of Horner's
    sequential loop; the wrap-around of uint32 arithmetic is the modulus."""
    chunk = max(1, min(chunk, len(tokens)))  # a short text (a sample) needs only its own powers
    up = _powers(base, chunk + 1)
    down = _powers(pow(base, -1, MODULUS), chunk)
    prefix = np.empty(len(tokens) + 1, dtype=np.uint32)
    prefix[0] = 0
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        size = len(part)
        sums = np.cumsum(part * down[:size], dtype=np.uint32)
        prefix[start + 1:start + size + 1] = prefix[start] * up[1:size + 1] + up[:size] * sums
    return prefix


def _equal(a: np.ndarray, a_starts: np.ndarray, b: np.ndarray, b_starts: np.ndarray, length: int) -> np.ndarray:
    """For each i, whether a[a_starts[i]:][:length] == b[b_starts[i]:][:length]: the tokens compared,
    in blocks of rows so that the gathered windows stay within ROW_ELEMENTS."""
    result = np.empty(len(a_starts), dtype=bool)
    rows = max(1, ROW_ELEMENTS // max(length, 1))
    offsets = np.arange(length)
    for first in range(0, len(a_starts), rows):
        block = slice(first, first + rows)
        left = a[a_starts[block, None] + offsets]
        right = b[b_starts[block, None] + offsets]
        result[block] = (left == right).all(axis=1)
    return result


def _table(hashes: np.ndarray) -> np.ndarray:
    """Flags of the hashes' top TABLE_BITS bits: one gather rules out almost every corpus window."""
    table = np.zeros(1 << TABLE_BITS, dtype=bool)
    table[hashes >> (32 - TABLE_BITS)] = True
    return table


def _pairs(hashes: np.ndarray, positions: np.ndarray, class_hashes: np.ndarray,
           active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (corpus position, class) pairs with equal hashes, among the active classes, in the order
    of the positions (a hash shared by colliding classes gives a pair with each)."""
    keys = class_hashes[active]
    low = np.searchsorted(keys, hashes, "left")
    counts = np.searchsorted(keys, hashes, "right") - low
    each = np.repeat(np.arange(len(hashes)), counts)
    within = np.arange(len(each)) - np.repeat(np.cumsum(counts) - counts, counts)
    return positions[each], active[low[each] + within]


def _first(length: int, classes: _Classes, found: np.ndarray) -> tuple[int, int, int] | None:
    """(length, sample offset, corpus offset) of the found class that occurs first in the corpus."""
    hit = np.flatnonzero(found >= 0)
    if not hit.size:
        return None
    best = hit[np.argmin(found[hit])]
    return length, int(classes.starts[best]), int(found[best])


def _run_lengths(occurs: np.ndarray) -> np.ndarray:
    """For each position, how many consecutive True start there."""
    breaks = np.append(np.flatnonzero(~occurs), len(occurs))
    positions = np.arange(len(occurs))
    return breaks[np.searchsorted(breaks, positions)] - positions


def _covered(starts: np.ndarray, length: int, size: int) -> int:
    """How many of size tokens lie inside at least one of the windows [s, s + length)."""
    depth = np.zeros(size + 1, dtype=np.int64)
    depth[starts] += 1  # starts are distinct, so plain fancy-index updates add up
    depth[starts + length] -= 1
    return int(np.count_nonzero(np.cumsum(depth[:size]) > 0))


class Corpus:
    """An index over a training text, built once, then checked against any number of samples."""

    def __init__(self, text: str | bytes) -> None:
        """str: tokens are code points; bytes: tokens are bytes."""
        self._is_bytes = isinstance(text, bytes)
        self._base, self._chunk = BASE, CHUNK
        self._tokens = _tokens(text)
        self._prefix = _prefix_hashes(self._tokens, self._base, self._chunk)

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, sample: str | bytes, min_copy: int = COPY_LENGTH) -> CopyReport:
        """The longest passage of the sample found verbatim in the corpus, and the share of the
        sample inside found passages of min_copy tokens or more."""
        if min_copy < 1:
            raise ValueError(f"min_copy must be at least 1, not {min_copy}")
        tokens = _tokens(sample)
        indexed = _Sample(tokens, self._base, self._chunk)
        share, runs, witness = self._copied(indexed, min_copy)
        length, sample_offset, corpus_offset = self._longest(indexed, min_copy, runs, witness)
        if not length:
            return CopyReport(len(tokens), 0, 0, 0, 0, "", share, min_copy)
        return CopyReport(len(tokens), length, sample_offset, corpus_offset, self._line(corpus_offset),
                          self._passage(corpus_offset, length), share, min_copy)

    def _copied(self, sample: _Sample, min_copy: int) -> tuple[float, np.ndarray | None, tuple[int, int, int] | None]:
        """The copied share; for each sample position, the run of consecutive windows of length
        min_copy found from there; and the found window that occurs first in the corpus."""
        size = len(sample.tokens)
        if size < min_copy:
            return 0.0, None, None
        classes = sample.classes(min_copy, np.arange(size - min_copy + 1))
        found = self._scan(min_copy, classes, sample, first_only=False)
        occurs = found[classes.of_window] >= 0
        share = _covered(np.flatnonzero(occurs), min_copy, size) / size
        return share, _run_lengths(occurs), _first(min_copy, classes, found)

    def _longest(self, sample: _Sample, min_copy: int, runs: np.ndarray | None,
                 witness: tuple[int, int, int] | None) -> tuple[int, int, int]:
        """(length, sample offset, corpus offset) of the longest found passage, by binary search
        over its length; (0, 0, 0) when no token of the sample occurs."""
        if witness is None or runs is None:
            best, low, high = (0, 0, 0), 0, min(min_copy - 1, len(sample.tokens), len(self))
        else:
            best, low, high = witness, min_copy, min_copy - 1 + int(runs.max())
            # the longest run is often one passage copied whole: then one scan settles it
            if high > low:
                found = self._occurs(sample, high, min_copy, runs)
                if found:
                    return found
                high -= 1
        while low < high:
            middle = (low + high + 1) // 2
            found = self._occurs(sample, middle, min_copy, runs)
            if found:
                best, low = found, middle
            else:
                high = middle - 1
        return best

    def _occurs(self, sample: _Sample, length: int, min_copy: int,
                runs: np.ndarray | None) -> tuple[int, int, int] | None:
        """A passage of the sample of this length found in the corpus, the first there, or None.
        From min_copy up only sample positions followed by enough found windows can start one."""
        if runs is not None and length >= min_copy:
            starts = np.flatnonzero(runs >= length - min_copy + 1)
        else:
            starts = np.arange(len(sample.tokens) - length + 1)
        if not starts.size or length > len(self):
            return None
        classes = sample.classes(length, starts)
        return _first(length, classes, self._scan(length, classes, sample, first_only=True))

    def _scan(self, length: int, classes: _Classes, sample: _Sample, first_only: bool) -> np.ndarray:
        """For each class, the corpus offset of its first occurrence, or -1. The corpus windows go
        a chunk at a time through the table, the hash search and the token comparison. first_only:
        stop at the first chunk where any class is found (its other classes may be missed)."""
        found = np.full(len(classes.hashes), -1, dtype=np.int64)
        windows = len(self) - length + 1
        if windows <= 0 or not found.size:
            return found
        power = np.uint32(pow(self._base, length, MODULUS))
        active = np.arange(len(found))
        table = _table(classes.hashes)
        for start in range(0, windows, self._chunk):
            stop = min(start + self._chunk, windows)
            hashes = self._prefix[start + length:stop + length] - self._prefix[start:stop] * power
            hits = np.flatnonzero(table[hashes >> (32 - TABLE_BITS)])
            if not hits.size:
                continue
            new, first = self._confirm(*_pairs(hashes[hits], hits + start, classes.hashes, active),
                                       classes, sample, length)
            if not new.size:
                continue
            found[new] = first
            if first_only:
                break
            active = active[found[active] < 0]
            if not active.size:
                break
            table = _table(classes.hashes[active])  # found classes drop out: later chunks hit less
        return found

    def _confirm(self, positions: np.ndarray, ids: np.ndarray, classes: _Classes, sample: _Sample,
                 length: int) -> tuple[np.ndarray, np.ndarray]:
        """The classes whose windows occur among these (position, class) hash matches, in position
        order, and where each first does. Each class's earliest match is compared first: almost
        always the hash was right, so a window repeated all over the corpus costs one comparison,
        not one per occurrence. The classes whose earliest match was a collision then have all their
        other matches compared at once."""
        matched, first = np.unique(ids, return_index=True)
        same = _equal(self._tokens, positions[first], sample.tokens, classes.starts[matched], length)
        settled, settled_at = matched[same], positions[first[same]]
        rest = ~np.isin(ids, settled)
        rest[first] = False
        if not rest.any():
            return settled, settled_at
        positions, ids = positions[rest], ids[rest]
        confirmed = _equal(self._tokens, positions, sample.tokens, classes.starts[ids], length)
        late, late_first = np.unique(ids[confirmed], return_index=True)
        return np.concatenate([settled, late]), np.concatenate([settled_at, positions[confirmed][late_first]])

    def _line(self, offset: int) -> int:
        """The 1-based line of the token at offset."""
        newlines = 0
        for start in range(0, offset, self._chunk):
            newlines += int(np.count_nonzero(self._tokens[start:min(start + self._chunk, offset)] == 10))
        return newlines + 1

    def _passage(self, offset: int, length: int) -> str:
        tokens = self._tokens[offset:offset + length]
        if self._is_bytes:
            return tokens.tobytes().decode("utf-8", errors="replace")
        return "".join(map(chr, tokens.tolist()))


def _keeps_ascii(encoding: str) -> bool:
    """Whether the codec decodes every ASCII byte to the same code point (utf-8, latin-1, cp1252;
    not utf-16 or EBCDIC)."""
    ascii_bytes = bytes(range(128))
    try:
        return codecs.decode(ascii_bytes, encoding) == ascii_bytes.decode("ascii")
    except (UnicodeError, TypeError, LookupError):
        return False


def read_corpus(path: str, encoding: str) -> Corpus:
    """The file's text as a Corpus: decoded with `encoding` (a Python codec name, a UTF-8 BOM
    dropped) or, when encoding == "bytes", its raw bytes. Raises UserError with a one-line message
    for an unreadable file or one that does not decode."""
    try:
        with open_regular(path, "-check_copy file") as handle:  # no device or FIFO: reads end
            data = handle.read()
    except OSError as error:
        raise UserError(f"cannot read -check_copy file {path}: {error.strerror or error}") from None
    if encoding == BYTES:
        return Corpus(data)
    check_text_encoding(encoding)
    if data.isascii() and _keeps_ascii(encoding):
        return Corpus(data)  # the same tokens and passages as the decoded text, without a copy of it
    skip = len(codecs.BOM_UTF8) if has_utf8_bom(data, encoding) else 0
    try:
        text = (data[skip:] if skip else data).decode(encoding)
    except UnicodeDecodeError as error:
        raise UserError(f"-check_copy file {path} is not valid {encoding} (byte offset {skip + error.start})") from None
    del data  # the bytes go before the index is built: the peak holds the text once less
    return Corpus(text)


def _escaped(text: str) -> str:
    """The text on one line: unprintable characters escaped as Python writes them (\\n, \\t, \\x1b)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(passage: str) -> str:
    """The passage escaped, cut to PASSAGE_SHOWN characters."""
    return _escaped(passage[:PASSAGE_SHOWN]) + ("…" if len(passage) > PASSAGE_SHOWN else "")


def _characters(count: int) -> str:
    return f"{count:,} character{'' if count == 1 else 's'}"


def report_line(report: CopyReport, corpus_name: str, label: str = "") -> str:
    """One line for stderr: the longest passage found in the corpus (its length, line, character
    position counted from 1, and the passage) and the share of the sample inside copied passages."""
    head = f"copy check ({label})" if label else "copy check"
    name = _escaped(corpus_name)
    if not report.sample_length:
        return f"{head}: the sample is empty"
    if not report.longest:
        return f"{head}: no character of the sample occurs in {name}"
    share = f"{report.copied_share:.1%} of the sample is inside copied passages of {report.min_copy:,}+ characters"
    return (f"{head}: longest passage found in {name}: {_characters(report.longest)} at line {report.corpus_line:,} "
            f'(character {report.corpus_offset + 1:,}): "{_shown(report.passage)}"; {share}')
