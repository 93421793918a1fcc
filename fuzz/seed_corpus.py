#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ from spec/vectors (run from anywhere).

frame_decode gets every vector input and every reassembly sequence; the session targets get
scripted conversations in their chunked input format (a length byte, then that many bytes).
"""
import hashlib, json, pathlib

root = pathlib.Path(__file__).resolve().parent
vectors = root.parent / "spec" / "vectors"
frames = json.loads((vectors / "frames" / "frame_codec_test.json").read_text())
reassembly = json.loads((vectors / "fragments" / "reassembly_test.json").read_text())

def tests(doc):
    for g in doc["testGroups"]:
        yield from g["tests"]

def write(target, data):
    d = root / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)

def chunked(*parts):
    out = bytearray()
    for p in parts:
        for i in range(0, len(p), 200):
            piece = p[i:i + 200]
            out.append(len(piece)); out += piece
    return bytes(out)

by_type = {}
for t in tests(frames):
    raw = bytes.fromhex(t["input"])
    write("frame_decode", raw)
    if t["result"] == "valid":
        by_type.setdefault(t["frame_type"], []).append(raw)
for t in tests(reassembly):
    write("frame_decode", b"".join(bytes.fromhex(f) for f in t["frames"]))

to_broker = [f for k in ("PUBLISH", "DELIVER_ACK", "SYNC", "HISTORY", "SUBSCRIBE", "UNSUBSCRIBE", "READ", "REQUEST", "PING", "PONG", "DISCONNECT") for f in by_type.get(k, [])]
for f in to_broker:
    write("broker_session", chunked(f))
write("broker_session", chunked(*to_broker))
for t in tests(reassembly):
    write("broker_session", chunked(*(bytes.fromhex(f) for f in t["frames"])))

connack = by_type["CONNACK"][0]
to_client = [f for k in ("PUBACK", "DELIVER", "NOTIFY", "SYNC_DONE", "HISTORY_PAGE", "SUBACK", "RECEIPT", "PRESENCE", "RESPONSE", "PING", "DISCONNECT") for f in by_type.get(k, [])]
for f in to_client:
    write("client_session", chunked(connack, f))
write("client_session", chunked(connack, *to_client))
print("corpus written under", root / "corpus")
