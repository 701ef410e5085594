"""FFV1 slice CRCs, checked in Python before a packet reaches the decoder.

FFV1 version 3 (RFC 9043, section 4.8) can end every slice of a frame with a footer: the slice's size
in bytes as a 24-bit big-endian integer, one error-status byte and, when the stream was encoded with
slice CRCs (FFmpeg's `slicecrc=1`, "ec" in the configuration record), a 32-bit CRC parity. Slices are
stored back to back, so a packet is walked from its end: each footer gives the start of its slice.
The parity is chosen so that the CRC (polynomial 0x04C11DB7, most significant bit first, initial
value 0, no final xor) of a whole slice, footer included, is 0.

FFmpeg's decoder only logs a slice whose CRC does not match and conceals it; reading that log needs
a Python log callback that FFmpeg's decoder threads would have to call under the GIL. Checking the
CRCs here instead keeps per-frame corruption detection with threaded decoders.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

# Footer of a version-3 slice with CRCs: 3 bytes size, 1 byte error status, 4 bytes CRC parity.
SLICE_FOOTER_BYTES = 8
# FFmpeg's FFV1 never writes more slices than this; a longer chain is not a slice chain.
MAX_SLICES = 1024

_MASK32 = 0xFFFFFFFF


def _bit_reversal_tables() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (256,) bytes with reversed bits, and uint16 (65536,) the same for byte pairs.

    The pair table reverses each byte in place, so it serves either byte order; it halves the
    lookups (~3x faster than the byte table on a packet).
    """
    single = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)
    pairs = np.arange(1 << 16)
    return single, single[pairs & 0xFF].astype(np.uint16) | single[pairs >> 8].astype(np.uint16) << 8


_BIT_REVERSED_BYTES, _BIT_REVERSED_PAIRS = _bit_reversal_tables()


def reverse_bits32(value: int) -> int:
    """The 32-bit integer `value` with its bit order reversed (bit 0 <-> bit 31)."""
    return int(f"{value & _MASK32:032b}"[::-1], 2)


def reverse_bits_of_bytes(data: np.ndarray) -> np.ndarray:
    """uint8 (n,) -> uint8 (n,): every byte with its 8 bits in reverse order."""
    out = np.empty_like(data)
    even = data.size & ~1
    _BIT_REVERSED_PAIRS.take(data[:even].view(np.uint16), out=out[:even].view(np.uint16))
    if even < data.size:
        out[even] = _BIT_REVERSED_BYTES[data[even]]
    return out


def _reflected_register(data: np.ndarray, register: int) -> int:
    """zlib's CRC-32 register (no initial or final inversion) after bit-reversed uint8 `data`."""
    return zlib.crc32(data, register ^ _MASK32) ^ _MASK32


def crc32_msb_first(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32 with polynomial 0x04C11DB7, MSB first, initial value `crc`, no final xor (FFmpeg's AV_CRC_32_IEEE).

    zlib computes the bit-reflected form of the same polynomial; feeding it the bytes with their bits
    reversed and reversing the 32-bit result gives this CRC (its cost: the README's "Measured" section).

    Args:
        data: the bytes (any buffer of uint8).
        crc: initial register value, e.g. the CRC of preceding bytes to continue it.
    Returns:
        the CRC as an unsigned 32-bit int.
    """
    reversed_bytes = reverse_bits_of_bytes(np.frombuffer(data, dtype=np.uint8))
    return reverse_bits32(_reflected_register(reversed_bytes, reverse_bits32(crc)))


class SliceCheck(NamedTuple):
    """Result of `check_slices` for one packet."""

    n_slices: int  # slices found walking the footers from the end (0 when the chain is broken)
    bad_slices: tuple[int, ...]  # indices, counted from the start of the packet, whose CRC or status is not 0
    chain_ok: bool  # the footers' sizes chain from the packet's end exactly to its start

    @property
    def intact(self) -> bool:
        """Every byte of the packet lies in a slice whose CRC and error status are 0."""
        return self.chain_ok and self.n_slices > 0 and not self.bad_slices

    def describe(self) -> str:
        """One phrase for an error message."""
        if not self.chain_ok:
            return "FFV1 slice sizes do not chain through the packet"
        if self.bad_slices:
            listed = ", ".join(str(i) for i in self.bad_slices)
            return f"FFV1 slice CRC mismatch in slice {listed} of {self.n_slices}"
        return "FFV1 slices intact"


def slice_spans(data: bytes | bytearray | memoryview) -> list[tuple[int, int]] | None:
    """Byte ranges [start, end) of the slices of a version-3 FFV1 packet with CRC footers, in packet order.

    Returns None when the footers do not chain from the end of the packet exactly to its start
    (a damaged packet, or a stream without slice CRCs such as FFV1 version 1).
    """
    view = memoryview(data).cast("B")
    spans: list[tuple[int, int]] = []
    end = len(view)
    while end > 0:
        if end < SLICE_FOOTER_BYTES or len(spans) == MAX_SLICES:
            return None
        size = int.from_bytes(view[end - SLICE_FOOTER_BYTES : end - SLICE_FOOTER_BYTES + 3], "big")
        start = end - SLICE_FOOTER_BYTES - size
        if start < 0:
            return None
        spans.append((start, end))
        end = start
    spans.reverse()
    return spans


def check_slices(data: bytes | bytearray | memoryview) -> SliceCheck:
    """Check the slice chain, the CRC parity and the error status of every slice of one FFV1 packet.

    Args:
        data: one packet, as demuxed (e.g. an `av.Packet`, which exposes its bytes as a buffer).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    spans = slice_spans(raw) if raw.size else None
    if spans is None:
        return SliceCheck(0, (), False)
    reversed_bytes = reverse_bits_of_bytes(raw)
    bad = []
    for index, (start, end) in enumerate(spans):
        error_status = raw[end - 5]
        if error_status != 0 or _reflected_register(reversed_bytes[start:end], 0) != 0:
            bad.append(index)
    return SliceCheck(len(spans), tuple(bad), True)


def carries_slice_crcs(first_packet: bytes | bytearray | memoryview) -> bool:
    """True when a stream's (keyframe) packet is a complete chain of slices whose CRCs are all 0.

    For a stream without slice CRCs this is False (the walk fails or a parity is not 0); a damaged
    packet of a stream with CRCs is also False, so decide from a packet, and fall back to another
    corruption check when it says False.
    """
    return check_slices(first_packet).intact
