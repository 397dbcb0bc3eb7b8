"""The fast percent-decoder agrees with urllib's reference decoder on every input."""

from urllib.parse import unquote_to_bytes

from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.http.codec import _unquote

# Pieces that exercise escapes, quoted-printable's own syntax, and line breaks.
_PIECES = st.sampled_from(
    [b"%", b"=", b"\n", b"\r", b" ", b"\t", b"_", b"+", b"a", b"F", b"3", b"D", b"\x00", b"\xff"]
)


@given(st.lists(st.one_of(_PIECES, st.binary(max_size=3)), max_size=40))
def test_fast_decoder_matches_reference(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    assert _unquote(raw) == unquote_to_bytes(raw.replace(b"+", b" "))


@given(st.binary(min_size=20, max_size=20))
def test_every_encoded_hash_decodes_to_itself(raw: bytes) -> None:
    encoded = "".join(f"%{b:02x}" if b % 3 else f"%{b:02X}" for b in raw).encode()
    assert _unquote(encoded) == raw


def test_malformed_escape_is_kept_literally() -> None:
    assert _unquote(b"ab%zz%4") == b"ab%zz%4"
