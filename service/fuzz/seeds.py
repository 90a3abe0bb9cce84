#!/usr/bin/env python3
"""Write a seed corpus for the `detect_stream` fuzz target: length-delimited DetectRequest sequences
(valid streams in every encoding/rate/channel family, and the documented bad cases). Protobuf is
encoded by hand: no dependency.

    python3 service/fuzz/seeds.py service/fuzz/corpus/detect_stream
"""

import math
import struct
import sys
from pathlib import Path


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v)


def field_bytes(num: int, b: bytes) -> bytes:
    return varint((num << 3) | 2) + varint(len(b)) + b


def field_f32(num: int, v: float) -> bytes:
    return varint((num << 3) | 5) + struct.pack("<f", v)


def config(enc=1, rate=16000, ch=1, keywords=(), thresholds=(), hop=0, trace=False) -> bytes:
    m = field_varint(1, enc) + field_varint(2, rate) + field_varint(3, ch)
    for k in keywords:
        m += field_bytes(5, k.encode())
    for k, t in thresholds:
        m += field_bytes(6, field_bytes(1, k.encode()) + field_f32(2, t))
    if trace:
        m += field_varint(8, 1)
    if hop:
        m += field_varint(12, hop)
    return field_bytes(1, m)


def audio(data: bytes) -> bytes:
    return field_bytes(2, field_bytes(1, data))


def label(kw: str, start: int, end: int) -> bytes:
    return field_bytes(3, field_bytes(1, kw.encode()) + field_varint(2, start) + field_varint(3, end))


def delimited(*msgs: bytes) -> bytes:
    return b"".join(varint(len(m)) + m for m in msgs)


def tone(rate: int, ch: int, ms: int, enc: int) -> bytes:
    n = rate * ms // 1000
    out = bytearray()
    for i in range(n):
        v = 0.3 * math.sin(2 * math.pi * 440 * i / rate)
        for _ in range(ch):
            out += struct.pack("<h", int(v * 32767)) if enc == 1 else struct.pack("<f", v)
    return bytes(out)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus/detect_stream")
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "s16-16k-mono": delimited(config(), audio(tone(16000, 1, 300, 1)), audio(tone(16000, 1, 900, 1))),
        "f32-48k-stereo": delimited(config(2, 48000, 2), audio(tone(48000, 2, 150, 2))),
        "s16-44k1-6ch": delimited(config(1, 44100, 6), audio(tone(44100, 6, 100, 1))),
        "s16-8k": delimited(config(1, 8000, 1, hop=10), audio(tone(8000, 1, 1100, 1))),
        "f32-odd-rate": delimited(config(2, 37123, 1, keywords=["yes", "go"]), audio(tone(37123, 1, 200, 2))),
        "labels": delimited(config(1, 16000, 1, thresholds=[("yes", 0.3)], trace=True),
                            label("yes", 100, 600), audio(tone(16000, 1, 1200, 1)), label("no", 0, 50)),
        "odd-bytes": delimited(config(), audio(b"\x01\x02\x03")),
        "nan": delimited(config(2), audio(struct.pack("<ff", 0.1, float("nan")))),
        "config-twice": delimited(config(), config()),
        "audio-first": delimited(audio(b"\x00\x00")),
        "bad-rate": delimited(config(1, 7999, 1)),
        "bad-channels": delimited(config(1, 16000, 9)),
    }
    for name, data in seeds.items():
        (out / name).write_bytes(data)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
