"""The vocabulary: tokens sorted by value, numbered from 1 in files and from 0 in the model.

Tokens are Unicode code points of the decoded text, or single bytes when the encoding is
`bytes` (char-rnn's byte-level mode). A byte token is stored as the character with the same
value (chr(b)), so both kinds live in the same JSON layout as torch-rnn's.
"""
import codecs
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from util.errors import UserError
from util.files import read_regular

BYTES = "bytes"
# The largest vocabulary file read: a vocabulary of every Unicode character (1,112,064 tokens) takes
# 36 MiB as preprocess.py writes it and 52 MiB as torch-rnn's (ASCII escapes) does.
MAX_JSON_BYTES = 64 << 20


class Vocab:
    def __init__(self, tokens: Iterable[str], encoding: str = "utf-8", source: str = "the vocabulary"):
        """A UserError, naming `source`, for an unusable encoding or tokens (token_problem)."""
        if encoding != BYTES:
            try:
                check_text_encoding(encoding)
            except UserError as error:
                raise UserError(f"{source}: {error}") from None
        self.tokens = list(tokens)
        self.encoding = encoding
        self.index = {token: i for i, token in enumerate(self.tokens)}
        problem = token_problem(self.tokens, len(self.index), encoding)
        if problem:
            raise UserError(f"{source}: {problem}")

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.tokens, self.encoding) == (other.tokens, other.encoding)

    def same_tokens(self, other: "Vocab") -> bool:
        """Whether ids mean the same thing: equal tokens, and equal encodings unless all are ASCII
        (where bytes and code points coincide)."""
        if self.tokens != other.tokens:
            return False
        return self.encoding == other.encoding or all(ord(t) < 128 for t in self.tokens)

    @property
    def is_bytes(self) -> bool:
        return self.encoding == BYTES

    def to_json(self) -> dict:
        """torch-rnn's layout (ids from 1), plus the encoding."""
        return {
            "idx_to_token": {str(i + 1): t for i, t in enumerate(self.tokens)},
            "token_to_idx": {t: i + 1 for i, t in enumerate(self.tokens)},
            "encoding": self.encoding,
        }

    @classmethod
    def from_json(cls, obj: dict, source: str = "vocabulary") -> "Vocab":
        try:
            table = obj["idx_to_token"]
            ids = sorted(int(i) for i in table)
            tokens = [table[str(i)] for i in ids]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(f"{source} is not a vocabulary file (no valid idx_to_token table)") from None
        single = all(isinstance(t, str) and len(t) == 1 for t in tokens)
        if not ids or ids != list(range(1, len(ids) + 1)) or not single:
            raise UserError(f"{source}: idx_to_token must map 1..N to single characters")
        vocab = cls(tokens, obj.get("encoding", "utf-8"), source)
        inverse = obj.get("token_to_idx")
        # torch-rnn encodes a start text through token_to_idx: the same file must mean the same to both
        if inverse is not None and inverse != {t: i + 1 for i, t in enumerate(tokens)}:
            raise UserError(f"{source}: token_to_idx is not the inverse of idx_to_token")
        return vocab

    def text_to_tokens(self, text: str | bytes) -> list[str]:
        """Split text (a command-line str or a file's bytes) into tokens: characters, or for a byte
        vocabulary bytes. A str becomes the bytes it was given as (os.fsencode undoes the
        command line's decoding); a file's bytes decode in the vocabulary's encoding, a UTF-8 BOM
        dropped as preprocess.py drops it."""
        if self.is_bytes:
            return [chr(b) for b in (text if isinstance(text, bytes) else os.fsencode(text))]
        if isinstance(text, bytes):
            if has_utf8_bom(text, self.encoding):
                text = text[len(codecs.BOM_UTF8):]
            text = text.decode(self.encoding)
        return list(text)

    def token_encoder(self) -> Callable[[str], bytes]:
        """Encodes tokens written one after another to one stream (stdout): a byte-order mark
        (utf-16, utf-32, utf-8-sig) comes once, before the first."""
        if self.is_bytes:
            return lambda token: bytes([ord(token)])
        return codecs.getincrementalencoder(self.encoding)(errors="replace").encode


def read_json(json_path: str) -> Any:
    """A vocabulary file (JSON) parsed, within bounds: a regular file of at most MAX_JSON_BYTES,
    nested no deeper than Python's recursion limit. Any problem is a UserError."""
    data = read_regular(json_path, "vocabulary file", MAX_JSON_BYTES,
                        missing=f"vocabulary file {json_path} does not exist (run preprocess.py first)",
                        why=" (a vocabulary of every Unicode character takes 52 MiB)")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise UserError(f"cannot read vocabulary file {json_path}: nested too deep") from None
    except ValueError as error:
        raise UserError(f"cannot read vocabulary file {json_path}: {error}") from None


def token_problem(tokens: list[str], distinct: int, encoding: str) -> str:
    """What makes `tokens` (`distinct` of them different) no vocabulary, or "": tokens are distinct
    single characters, not lone surrogates (no text decodes to one), and bytes (chr(0..255)) in a
    vocabulary of bytes, which sample.py writes out one byte each."""
    if distinct < len(tokens):
        return f"{len(tokens) - distinct} token(s) appear more than once"
    if not all(isinstance(t, str) and len(t) == 1 for t in tokens):
        return "every token must be a single character"
    surrogate = next((t for t in tokens if "\ud800" <= t <= "\udfff"), None)
    if surrogate is not None:
        return f"token U+{ord(surrogate):04X} is a lone surrogate, not a character"
    if encoding == BYTES and tokens and max(tokens) > "\xff":
        return f"token {max(tokens)!r} (U+{ord(max(tokens)):04X}) is not a byte, in a vocabulary of bytes"
    return ""


def unknown_names(tokens: list[str], vocab: Vocab) -> str:
    """The tokens missing from the vocabulary, sorted, the first 20 shown as reprs ("" if none)."""
    return " ".join(repr(t) for t in sorted({t for t in tokens if t not in vocab.index})[:20])


# Text and bytes a codec must read and write alike in pieces and whole: characters of 1 to 4 UTF-8
# bytes (split across pieces by a multibyte codec), a shift sequence (utf-7's +...-) and octal escapes
# (backslash 101, which unicode_escape's decoder misreads when a piece ends inside one)
PROBE_TEXT = "a+é€\n😀-"
PROBE_BYTES = b"\\101\\12x"


def check_text_encoding(encoding: str) -> None:
    """A UserError unless Python can encode and decode text in `encoding`, replacing what it cannot
    encode as sample.py does (not so rot13, base64, zlib and the other bytes-to-bytes codecs), and
    gives the same text and bytes in pieces as whole: preprocess.py decodes a file a chunk at a time
    and sample.py encodes a character at a time (not so punycode or unicode_escape)."""
    try:
        encoded = PROBE_TEXT.encode(encoding, errors="replace")
    except (LookupError, UnicodeError, TypeError):
        raise UserError(f"unknown text encoding {encoding!r} (use utf-8, bytes, latin-1, ...)") from None
    if not (same_in_pieces(encoding, encoded) and same_in_pieces(encoding, encoded + PROBE_BYTES)):
        raise UserError(f"text encoding {encoding!r} reads text in pieces differently from whole, and files are "
                        f"read in pieces: use another (utf-8, bytes, latin-1, ...)")


def same_in_pieces(encoding: str, data: bytes) -> bool:
    """Whether `data` decodes a byte at a time as it does whole (or fails both ways), and its text,
    encoded a character at a time, decodes back to it."""
    try:
        whole: str | None = codecs.decode(data, encoding)
    except UnicodeError:
        whole = None
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
        pieces: str | None = "".join(decoder.decode(data[i:i + 1]) for i in range(len(data))) + decoder.decode(
            b"", final=True)
    except UnicodeError:
        pieces = None
    if whole is None or pieces != whole:
        return pieces == whole  # both failed (the probe is no text in this codec), or they differ
    encoder = codecs.getincrementalencoder(encoding)(errors="replace")
    try:
        written = b"".join(encoder.encode(c) for c in whole) + encoder.encode("", final=True)
        return codecs.decode(written, encoding) == whole
    except UnicodeError:
        return False


def has_utf8_bom(start: bytes, encoding: str) -> bool:
    """Whether text in `encoding` starts with a UTF-8 byte-order mark, which is not a token: in any
    spelling of UTF-8 but utf-8-sig, whose decoder drops it itself."""
    return codecs.lookup(encoding).name == "utf-8" and start.startswith(codecs.BOM_UTF8)
