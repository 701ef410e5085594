"""Rewriting FFmpeg's Matroska output in place, with equal lengths, into the Azure Kinect layout:
microsecond TimestampScale, the SDK-style TrackUIDs, BITMAPINFOHEADERs with positive heights,
FFmpeg's DURATION/ENCODER tags voided (see `k4a.mkv`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmface4d_stream.k4a import ebml
from mmface4d_stream.k4a.mkv import _BMP_HEADER, _FOURCC_BITS, _fourcc


def patch_kinect_layout(path: Path, tracks: dict[str, Any]) -> None:
    """Rewrite FFmpeg's output at `path` in place into the Kinect layout. tracks: {track name: its
    writer track (`uid`, `fourcc`, `width`, `height`)}."""
    with open(path, "r+b") as f:
        top = ebml.read_tree(f, skip_clusters=True)
        segment = next(e for e in top if e.id == ebml.SEGMENT)
        info = segment.find(ebml.INFO)
        ebml.write_uint_in_place(f, info.find(ebml.TIMESTAMP_SCALE), 1000)
        uid_map: dict[int, int] = {}
        for entry in segment.find(ebml.TRACKS).find_all(ebml.TRACK_ENTRY):
            name = ebml.read_string(f, entry.find(ebml.TRACK_NAME))
            track = tracks.get(name)
            uid_el = entry.find(ebml.TRACK_UID)
            if track is not None and uid_el is not None:
                uid_map[ebml.read_uint(f, uid_el)] = track.uid
                ebml.write_uint_in_place(f, uid_el, track.uid)
            private = entry.find(ebml.CODEC_PRIVATE)
            if track is None or private is None or private.size < _BMP_HEADER.size:
                continue
            fields = list(_BMP_HEADER.unpack(ebml.read_payload(f, private)[:_BMP_HEADER.size]))
            fields[2] = track.height  # positive: top-down, as the SDK writes it
            fields[4] = _FOURCC_BITS[track.fourcc]
            fields[5] = _fourcc(track.fourcc)
            fields[6] = 0 if track.fourcc == "MJPG" else track.width * track.height * 2
            ebml.write_payload_in_place(f, ebml.Element(private.id, private.offset, private.data_offset,
                                                        _BMP_HEADER.size, []), _BMP_HEADER.pack(*fields))
        tags = segment.find(ebml.TAGS)
        for tag in tags.find_all(ebml.TAG) if tags else []:
            targets = tag.find(ebml.TARGETS)
            for target in targets.find_all(ebml.TAG_TRACK_UID) if targets else []:
                old = ebml.read_uint(f, target)
                if old in uid_map:
                    ebml.write_uint_in_place(f, target, uid_map[old])
            for simple in tag.find_all(ebml.SIMPLE_TAG):
                name_el = simple.find(ebml.TAG_NAME)
                if name_el is not None and ebml.read_string(f, name_el) in ("DURATION", "ENCODER"):
                    ebml.void_in_place(f, simple)
