"""FFV1 slice CRCs: the CRC itself against known values, the slice walk on built and on real packets."""

from __future__ import annotations

import av
import numpy as np

from mmface4d_stream.formats.ffv1_crc import (
    SLICE_FOOTER_BYTES, carries_slice_crcs, check_slices, crc32_msb_first, reverse_bits32, reverse_bits_of_bytes,
    slice_spans)
from mmface4d_stream.formats.mesh_nut import MeshNutWriter, mesh_nut_paths


def _bitwise_crc(data: bytes, crc: int = 0) -> int:
    """Textbook MSB-first CRC-32, polynomial 0x04C11DB7, no reflection, no final xor."""
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_check_value_matches_crc32_posix():
    # CRC-32/POSIX (cksum's CRC without the length) is this CRC with a final xor of 0xFFFFFFFF;
    # its catalogued check value for "123456789" is 0x765E7680.
    assert crc32_msb_first(b"123456789") == 0x765E7680 ^ 0xFFFFFFFF == 0x89A1897F
    assert _bitwise_crc(b"123456789") == 0x89A1897F


def test_crc_matches_the_bitwise_definition_and_continues():
    rng = np.random.default_rng(3)
    for size in (0, 1, 7, 100, 4099):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32_msb_first(data) == _bitwise_crc(data)
        assert crc32_msb_first(data, 0x12345678) == _bitwise_crc(data, 0x12345678)
    assert crc32_msb_first(b"56789", crc32_msb_first(b"1234")) == 0x89A1897F


def test_reverse_bits32():
    assert reverse_bits32(1) == 0x80000000
    assert reverse_bits32(0x04C11DB7) == 0xEDB88320  # the polynomial in zlib's reflected form
    assert reverse_bits32(reverse_bits32(0xDEADBEEF)) == 0xDEADBEEF


def _slice(payload: bytes, error_status: int = 0) -> bytes:
    """A version-3 slice: payload, 24-bit size, error status, then the parity that makes its CRC 0."""
    body = payload + len(payload).to_bytes(3, "big") + bytes([error_status])
    return body + crc32_msb_first(body).to_bytes(4, "big")


def test_built_packet_walks_and_checks():
    slices = [_slice(bytes(range(50))), _slice(b"\x07" * 1000), _slice(b"")]
    packet = b"".join(slices)
    assert crc32_msb_first(slices[1]) == 0
    ends = np.cumsum([len(s) for s in slices])
    assert slice_spans(packet) == [(0, ends[0]), (ends[0], ends[1]), (ends[1], ends[2])]
    assert check_slices(packet).intact and check_slices(packet).n_slices == 3
    assert carries_slice_crcs(packet)

    damaged = bytearray(packet)
    damaged[ends[0] + 10] ^= 0x01  # one bit in slice 1's payload
    check = check_slices(damaged)
    assert check.chain_ok and check.bad_slices == (1,) and not check.intact
    assert check.describe() == "FFV1 slice CRC mismatch in slice 1 of 3"

    flagged = _slice(b"abc", error_status=1) + _slice(b"def")
    assert check_slices(flagged).bad_slices == (0,)


def test_broken_chains_are_not_slices():
    packet = _slice(b"x" * 100)
    assert not check_slices(packet[1:]).chain_ok  # the first slice's size overruns the start
    assert not check_slices(b"\x00" * 3).chain_ok  # shorter than a footer
    assert not check_slices(b"").intact
    too_big = bytearray(packet)
    too_big[-SLICE_FOOTER_BYTES] = 0xFF
    assert not check_slices(too_big).chain_ok
    assert check_slices(too_big).describe() == "FFV1 slice sizes do not chain through the packet"


def _packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def test_our_files_carry_crcs_and_one_flipped_bit_shows(tmp_path):
    rng = np.random.default_rng(0)
    with MeshNutWriter(tmp_path / "m") as writer:
        for _ in range(4):
            writer.write(rng.normal(0, 0.05, (3000, 3)).astype(np.float32))
    packets = _packets(mesh_nut_paths(tmp_path / "m")[0])
    assert len(packets) == 4
    assert all(check_slices(p).intact for p in packets)
    damaged = bytearray(packets[2])
    damaged[len(damaged) // 2] ^= 0x10
    assert check_slices(damaged).bad_slices == (0,)


def test_the_released_sample_has_no_slice_crcs(mmface4d_sample_dir):
    # The released dataset's files are FFV1 version 1: no footers, so no chain through any packet.
    packets = _packets(mmface4d_sample_dir / "reconstruct_filt_0.nut")
    assert len(packets) == 67
    assert not any(carries_slice_crcs(p) for p in packets)


def test_reverse_bits_of_bytes_even_and_odd_lengths():
    for size in (0, 1, 2, 5, 256):
        data = np.arange(size, dtype=np.uint8)
        expected = np.array([int(f"{b:08b}"[::-1], 2) for b in data], dtype=np.uint8)
        np.testing.assert_array_equal(reverse_bits_of_bytes(data), expected)
