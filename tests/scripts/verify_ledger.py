#!/usr/bin/env python3
"""Verifies an exported ferry audit ledger (`ferry audit export`: JSON lines, from the file named as
the only argument, or from stdin) without ferry, following the construction in docs/audit.md. Prints
OK and the head hash, or the first broken entry and exits 1. An empty or unreadable input is an error
(exit 2): a ledger always has entries."""
import hashlib
import json
import sys

GENESIS = "0" * 64


def fail(message):
    print(f"BROKEN: {message}")
    sys.exit(1)


if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help")):
    print(f"usage: {sys.argv[0]} [LEDGER.jsonl]   (default: stdin)", file=sys.stderr)
    sys.exit(2)
try:
    source = open(sys.argv[1], encoding="utf-8") if len(sys.argv) == 2 else sys.stdin
    lines = source.readlines()
except (OSError, UnicodeDecodeError) as e:
    print(f"ERROR: cannot read the ledger: {e}", file=sys.stderr)
    sys.exit(2)

prev = None
count = 0
for number, line in enumerate(lines, 1):
    if not line.strip():
        continue
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        fail(f"line {number} is not JSON: {e}")
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
if prev is None:
    print("ERROR: the input holds no ledger entries (export it with `ferry audit export`)", file=sys.stderr)
    sys.exit(2)
print(f"OK {count} entries, head {prev['hash']}")
