"""``fastipc ls`` and ``fastipc rm``: list and remove the IPC objects on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import inventory as inv
from ._common import CLIError, describe, printable

__all__ = ["add_ls", "add_rm", "cmd_ls", "cmd_rm"]


# ---------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------


def add_ls(sub: Any) -> None:
    """Add the ``ls`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "ls",
        help="list rings, message queues, socket files and FIFOs, with owner pid and liveness",
        description="List the fastipc rings in /dev/shm, the POSIX message queues and the Unix "
        "socket files and FIFOs that live processes of yours hold, each with the backend "
        "that made it (rings), its size, mode, the messages waiting in it (rings, queues), the "
        "pids holding it and whether it is alive (a ring: mapped by a live process; a queue: open; a socket: bound by a live process; a FIFO: open for reading). With "
        "PATHs, list the socket files and FIFOs in those files and directories instead, "
        "stale ones included (a PATH that is a symbolic link is refused, not followed; "
        "DIR/ lists the directory a link points to); a URL (shm://NAME, mq:///NAME, ...) shows that object.",
        epilog="examples:\n  fastipc ls\n  fastipc ls /tmp --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files, directories or URLs to show")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the IPC objects this process can see (or those at the given paths)."""
    notes: list[str] = []
    if args.paths:
        scan = inv.ProcessScan()
        entries: list[inv.Entry] = []
        for arg in args.paths:
            if "://" in arg:
                entries.append(inv.lookup(inv.parse_target(arg), scan))
            else:
                entries.extend(inv.list_paths([arg], scan))
    else:
        entries, notes = inv.inventory()
    if args.json:
        print(json.dumps({"entries": [e.to_json() for e in entries], "notes": notes}, indent=2))
        return 0
    rows = [inv.COLUMNS, *(tuple(map(printable, r)) for r in inv.iter_rows(entries))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    sys.stdout.flush()  # the table out first: a reader gone (| head -0) ends it quietly
    for note in notes:
        print(f"fastipc: note: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# rm
# ---------------------------------------------------------------------------


def add_rm(sub: Any) -> None:
    """Add the ``rm`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "rm",
        help="remove rings, message queues, socket files or FIFOs (not live ones, unless --force)",
        description="Remove each NAME: a ring (shm://NAME or a bare ring name), a message queue "
        "(mq:///NAME), a socket file (a path, unix://PATH or unixgram://PATH) or a FIFO (a path "
        "or fifo://PATH). One that is alive (a ring mapped by a live process, a socket a "
        "process is bound to or that accepts connections, a queue held open, a FIFO with a "
        "reader) is refused unless --force; processes holding it keep working. A NAME that is "
        "a symbolic link is refused: neither it nor what it points to is removed. Every NAME is "
        "tried; the exit status is 1 if any failed.",
        epilog="examples:\n  fastipc rm shm://myring mq:///jobs /tmp/app.sock\n"
        "  fastipc rm --force myring",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="what to remove")
    p.add_argument("-f", "--force", action="store_true", help="remove live ones too")
    p.add_argument("-v", "--verbose", action="store_true", help="say what was removed")
    p.set_defaults(run=cmd_rm)


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove the named objects; refuse live ones without --force."""
    scan = inv.ProcessScan()
    failed = 0
    for arg in args.names:
        try:
            entry = inv.lookup(inv.parse_target(arg), scan)
            if entry.alive and not args.force:
                holders = f"pid {','.join(map(str, entry.pids))}" if entry.pids else "a process"
                raise CLIError(f"{entry.name} is in use by {holders}: not removed (use --force)")
            inv.remove(entry)
        except (CLIError, ValueError, OSError) as exc:
            print(f"fastipc: error: {describe(exc)}", file=sys.stderr)
            failed += 1
        else:
            if args.verbose:
                print(f"removed {entry.name}")
    return 1 if failed else 0
