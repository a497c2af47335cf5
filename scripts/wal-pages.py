#!/usr/bin/env python3
"""Which tables and indexes each transaction in a SQLite WAL wrote, on average.

Every dirty page is a WAL frame written (two pwrites) and fsynced, so pages per transaction is
what a layout costs. Usage, with a database left by `bench --keep-db`:

    scripts/wal-pages.py /tmp/.tmpXXXX/runner.db [LAST_N_TRANSACTIONS]

The WAL holds the last ~1,000 pages' worth of transactions (since the last checkpoint, and the
rest of the cycle before it), so they are those of the bench's 16-in-flight phase. The database and its WAL are copied first:
opening them in place would checkpoint and delete the WAL. Needs the `sqlite3` shell (for the
`dbstat` table that maps page numbers to tables).
"""
import collections
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def frames_by_transaction(wal):
    """Page numbers of each committed transaction, oldest first.

    After a checkpoint SQLite writes the WAL again from its start with a new salt, so the file
    holds the transactions since the last checkpoint (the header's salt) and, after them, the rest
    of the cycle before (an older salt; its first transaction may be cut, and is skipped).
    """
    page_size = struct.unpack(">I", wal[8:12])[0]
    salt = wal[16:24]
    segments, current, off = {}, [], 32
    order = []
    while off + 24 + page_size <= len(wal):
        page, commit = struct.unpack(">II", wal[off : off + 8])
        frame_salt = wal[off + 8 : off + 16]
        if frame_salt not in segments:
            segments[frame_salt] = []
            order.append(frame_salt)
            # A segment with an older salt starts in the middle of a transaction.
            current = [] if frame_salt == salt else None
        if current is not None:
            current.append(page)
        if commit:
            if current is not None:
                segments[frame_salt].append(current)
            current = []
        off += 24 + page_size
    older = [tx for s in order if s != salt for tx in segments[s]]
    return older + segments.get(salt, [])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    db = sys.argv[1]
    last = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "copy.db")
        shutil.copy(db, copy)
        if not os.path.exists(db + "-wal"):
            sys.exit(f"{db}-wal does not exist (the database was checkpointed and closed)")
        shutil.copy(db + "-wal", copy + "-wal")
        wal = open(copy + "-wal", "rb").read()
        rows = subprocess.run(
            ["sqlite3", copy, "SELECT name, pageno, pagetype FROM dbstat"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    owner = {}
    for line in rows.splitlines():
        name, page, kind = line.split("|")
        owner[int(page)] = f"{name} ({kind})"
    txs = frames_by_transaction(wal)
    if last:
        txs = txs[-last:]
    if not txs:
        sys.exit("no committed transaction in the WAL")
    counts = collections.Counter(owner.get(p, "?") for tx in txs for p in tx)
    frames = sum(len(tx) for tx in txs)
    print(f"{len(txs)} transactions, {frames} frames, {frames / len(txs):.1f} pages each")
    for name, n in counts.most_common():
        print(f"{n / len(txs):6.2f}  {name}")


if __name__ == "__main__":
    main()
