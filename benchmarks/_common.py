"""Shared pieces of the benchmark scripts: memory probes, progress lines and table printing."""

from __future__ import annotations

import sys

#: source of a function reading this process's memory from /proc (pasted into child scripts):
#: VmHWM (peak) and VmRSS (current) belong to this process image, whereas getrusage's
#: ru_maxrss would carry over the parent's peak across fork + exec
STATUS_MB = '''
def status_mb(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(key)
'''


def report_row(row: list) -> None:
    """One progress line on stderr for a finished table row (the table itself goes to stdout at the end)."""
    print("  done:", " | ".join(map(str, row)), file=sys.stderr, flush=True)


def print_table(title: str, header: list[str], rows: list[list], markdown: bool) -> None:
    """Print a title line and the rows as a Markdown or an aligned plain table."""
    print(title)
    cells = [[str(x) for x in row] for row in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(x) for x in column) for column in zip(header, *cells)]
    for row in [header, *cells]:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths)))
