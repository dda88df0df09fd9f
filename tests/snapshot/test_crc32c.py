"""CRC32C in C (_core.crc32c, _core.crc32c_pages): known vectors, and both implementations
(SSE4.2 and the portable tables) against a bit-by-bit reference in Python."""

from __future__ import annotations

import random
import struct

import pytest

from ntshim import _core

POLY = 0x82F63B78  # 0x1EDC6F41 reflected


def reference(data: bytes, crc: int = 0) -> int:
    """The definition, one bit at a time: reflected, initial value and final xor 0xFFFFFFFF."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ POLY if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


IMPLEMENTATIONS = [pytest.param(False, id="hardware"), pytest.param(True, id="portable")]

# RFC 3720 (iSCSI) appendix B.4 and the usual check value.
VECTORS = [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


def test_this_machine_has_the_hardware_path() -> None:
    # x86-64 with SSE4.2 (every machine this project runs on): "hardware" below tests the
    # instruction, not the tables a second time.
    assert _core.CRC32C_HARDWARE == 1


@pytest.mark.parametrize("portable", IMPLEMENTATIONS)
@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_known_vectors(portable: bool, data: bytes, expected: int) -> None:
    assert _core.crc32c(data, portable=portable) == expected
    assert reference(data) == expected


@pytest.mark.parametrize("portable", IMPLEMENTATIONS)
def test_random_data_of_every_length_and_alignment(portable: bool) -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 * 8192 + 200)
    # Lengths around the 8-byte steps and the three-stream block sizes (3 x 256, 3 x 8192).
    lengths = [0, 1, 7, 8, 9, 63, 255, 256, 767, 768, 769, 4095, 4096, 4097, 24575, 24576, 24577, 3 * 8192 + 180]
    for length in lengths:
        for offset in (0, 1, 3, 8, 13):
            chunk = data[offset : offset + length]
            expected = reference(chunk) if length <= 4097 else _core.crc32c(chunk, portable=not portable)
            assert _core.crc32c(chunk, portable=portable) == expected, (length, offset)
    # One comparison with the reference itself across a whole 3 x 8192 block.
    assert _core.crc32c(data, portable=portable) == reference(data)


@pytest.mark.parametrize("portable", IMPLEMENTATIONS)
def test_continues_from_a_value(portable: bool) -> None:
    data = random.Random(1).randbytes(10000)
    first = _core.crc32c(data[:3333], portable=portable)
    assert _core.crc32c(data[3333:], first, portable=portable) == _core.crc32c(data) == reference(data)
    assert _core.crc32c(data[3333:], value=first) == reference(data[3333:], first)


@pytest.mark.parametrize("portable", IMPLEMENTATIONS)
def test_pages(portable: bool) -> None:
    data = random.Random(2).randbytes(5 * 4096 + 123)  # the last page is partial
    table = _core.crc32c_pages(data, 4096, portable=portable)
    assert len(table) == 6 * 4
    expected = [reference(data[i : i + 4096]) for i in range(0, len(data), 4096)]
    assert list(struct.unpack("<6I", table)) == expected
    assert _core.crc32c_pages(b"", 4096) == b""
    # Large enough to run without the GIL; any buffer: a memoryview of a bytearray.
    big = bytearray(random.Random(3).randbytes(1 << 20))
    pages = _core.crc32c_pages(memoryview(big), 4096, portable=portable)
    assert pages == b"".join(struct.pack("<I", _core.crc32c(big[i : i + 4096])) for i in range(0, len(big), 4096))


def test_bad_input() -> None:
    with pytest.raises(TypeError):
        _core.crc32c("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value"):
        _core.crc32c(b"x", 1 << 32)
    with pytest.raises(ValueError, match="value"):
        _core.crc32c(b"x", -1)
    with pytest.raises(TypeError, match="value"):
        _core.crc32c(b"x", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page_size"):
        _core.crc32c_pages(b"x", 0)
