#!/usr/bin/env python3
"""Stream a WAV file to a kws service and print keyword events as they arrive.

A minimal example that uses nothing but the proto (proto/kws/v1/kws.proto): any language with gRPC
stubs can do the same. Generate the stubs first (see README.md):

    python -m grpc_tools.protoc -I proto --python_out=STUBS --grpc_python_out=STUBS proto/kws/v1/kws.proto
    python client/python/kws_stream.py --stubs STUBS --addr 127.0.0.1:50051 speech.wav

The WAV may have any rate (8-192 kHz) and 1-8 channels of 16-bit PCM: the server resamples and
downmixes. Exit status: 0 = a keyword was detected, 1 = none, 2 = bad input, 3 = RPC error.
"""

import argparse
import json
import os
import sys
import time
import wave


def requests(pb, wav, chunk_ms, realtime):
    """Config first, then the audio in chunks (optionally at real-time pace)."""
    rate, channels = wav.getframerate(), wav.getnchannels()
    yield pb.DetectRequest(
        config=pb.StreamConfig(
            encoding=pb.AUDIO_ENCODING_PCM_S16LE,
            sample_rate_hz=rate,
            channels=channels,
            client_stream_id="python-example",
            disable_progress=True,
        )
    )
    frames = max(1, rate * chunk_ms // 1000)
    start, sent = time.monotonic(), 0
    while True:
        data = wav.readframes(frames)
        if not data:
            return
        sent += len(data) // (2 * channels)
        if realtime:
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        yield pb.DetectRequest(audio=pb.AudioChunk(data=data))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wav")
    ap.add_argument("--addr", default=os.environ.get("KWS_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--token", default=os.environ.get("KWS_TOKEN"), help="bearer token")
    ap.add_argument("--stubs", help="directory holding the generated kws/v1/kws_pb2*.py")
    ap.add_argument("--chunk-ms", type=int, default=100)
    ap.add_argument("--realtime", action="store_true", help="send at real-time pace")
    ap.add_argument("--json", action="store_true", help="one JSON object per event")
    args = ap.parse_args()

    if args.stubs:
        sys.path.insert(0, args.stubs)
    import grpc
    from kws.v1 import kws_pb2 as pb
    from kws.v1 import kws_pb2_grpc as pb_grpc

    try:
        wav = wave.open(args.wav, "rb")
    except (OSError, wave.Error, EOFError) as e:
        print(f"kws_stream: cannot read {args.wav}: {e}", file=sys.stderr)
        return 2
    if wav.getsampwidth() != 2:
        print(f"kws_stream: {args.wav}: only 16-bit PCM WAVs are supported here", file=sys.stderr)
        return 2

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    events = 0
    with grpc.insecure_channel(args.addr) as channel:
        stub = pb_grpc.KeywordSpottingStub(channel)
        try:
            for resp in stub.Detect(requests(pb, wav, args.chunk_ms, args.realtime), metadata=metadata):
                kind = resp.WhichOneof("response")
                if kind == "ready":
                    m = resp.ready.model
                    print(f"stream {resp.ready.stream_id} on {m.name} ({m.variant})", file=sys.stderr)
                elif kind == "event":
                    e = resp.event
                    events += 1
                    if args.json:
                        print(json.dumps({"keyword": e.keyword, "score": round(e.score, 4),
                                          "start_ms": e.start_ms, "end_ms": e.end_ms, "event_id": e.event_id}),
                              flush=True)
                    else:
                        print(f"{e.end_ms / 1000:8.2f} s  {e.keyword:<8} score {e.score:.3f}", flush=True)
                elif kind == "summary":
                    s = resp.summary
                    print(f"{s.events} event(s) in {s.audio_ms_received / 1000:.2f} s of audio", file=sys.stderr)
        except grpc.RpcError as e:
            print(f"kws_stream: server returned {e.code().name}: {e.details()}", file=sys.stderr)
            return 2 if e.code() == grpc.StatusCode.INVALID_ARGUMENT else 3
    return 0 if events else 1


if __name__ == "__main__":
    sys.exit(main())
