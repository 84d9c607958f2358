"""The vocabulary: tokens sorted by value, numbered from 1 in files and from 0 in the model.

Tokens are Unicode code points of the decoded text, or single bytes when the encoding is
`bytes` (char-rnn's byte-level mode). A byte token is stored as the character with the same
value (chr(b)), so both kinds live in the same JSON layout as torch-rnn's.
"""
import codecs
import os
from collections.abc import Callable, Iterable

from util.errors import UserError

BYTES = "bytes"


class Vocab:
    def __init__(self, tokens: Iterable[str], encoding: str = "utf-8"):
        if encoding != BYTES:
            check_text_encoding(encoding)
        self.tokens = list(tokens)
        self.encoding = encoding
        self.index = {token: i for i, token in enumerate(self.tokens)}

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
        if ids != list(range(1, len(ids) + 1)) or not all(isinstance(t, str) and len(t) == 1 for t in tokens):
            raise UserError(f"{source}: idx_to_token must map 1..N to single characters")
        return cls(tokens, obj.get("encoding", "utf-8"))

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


def unknown_names(tokens: list[str], vocab: Vocab) -> str:
    """The tokens missing from the vocabulary, sorted, the first 20 shown as reprs ("" if none)."""
    return " ".join(repr(t) for t in sorted({t for t in tokens if t not in vocab.index})[:20])


def check_text_encoding(encoding: str) -> None:
    """A UserError unless Python can encode and decode text in `encoding`, replacing what it cannot
    encode as sample.py does (not so rot13, base64, zlib and the other bytes-to-bytes codecs)."""
    try:
        "a".encode(encoding, errors="replace")
    except (LookupError, UnicodeError, TypeError):
        raise UserError(f"unknown text encoding {encoding!r} (use utf-8, bytes, latin-1, ...)") from None


def has_utf8_bom(start: bytes, encoding: str) -> bool:
    """Whether text in `encoding` starts with a UTF-8 byte-order mark, which is not a token: in any
    spelling of UTF-8 but utf-8-sig, whose decoder drops it itself."""
    return codecs.lookup(encoding).name == "utf-8" and start.startswith(codecs.BOM_UTF8)
