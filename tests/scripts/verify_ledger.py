#!/usr/bin/env python3
"""Verifies an exported ferry audit ledger (`ferry audit export`, JSON lines on stdin) without ferry,
following the construction in docs/audit.md. Prints OK and the head hash, or the first broken entry
and exits 1."""
import hashlib
import json
import sys

GENESIS = "0" * 64


def fail(message):
    print(f"BROKEN: {message}")
    sys.exit(1)


prev = None
count = 0
for line in sys.stdin:
    if not line.strip():
        continue
    entry = json.loads(line)
    seq, content, prev_hash, recorded = entry["seq"], entry["content"], entry["prev_hash"], entry["hash"]
    if hashlib.sha256((prev_hash + "\n" + content).encode("utf-8")).hexdigest() != recorded:
        fail(f"entry #{seq} was edited")
    body = json.loads(content)
    if json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False) != content:
        fail(f"entry #{seq} is not in canonical form")
    if body.get("seq") != seq:
        fail(f"entry at #{seq} was recorded as #{body.get('seq')}")
    if prev is None:
        if seq == 1 and prev_hash != GENESIS:
            fail("entry #1 does not start the chain")
    else:
        if seq != prev["seq"] + 1:
            fail(f"entries #{prev['seq'] + 1} to #{seq - 1} are missing")
        if prev_hash != prev["hash"]:
            fail(f"entry #{seq} does not chain to #{prev['seq']}")
    prev = entry
    count += 1
print(f"OK {count} entries, head {prev['hash'] if prev else GENESIS}")
