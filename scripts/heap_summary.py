#!/usr/bin/env python3
"""Condenses a `heaptrack_print --print-leaks` report (what scripts/heap-profile.sh
writes) into one line per allocation site: bytes per channel, calls, the function
that allocated and the first frame of ours (walkie_*) or of the crate that made
it (rumqttc, tokio::sync, metrics...) above it.

    scripts/heap_summary.py REPORT CHANNELS
"""
import re
import sys

UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
HEADER = re.compile(r"^(\S+) leaked over (\d+) calls from(:?)$")
OURS = ("walkie", "rumqttc", "metrics", "tokio::sync", "tokio::task", "tokio_util")


def size(text):
    unit = text[-1] if text[-1] in UNITS else "B"
    number = text[:-1] if text[-1] in UNITS else text
    return float(number) * UNITS[unit]


def demangle(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    for code, char in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$", "{"),
                       ("$u7d$", "}"), ("$C$", ","), ("..", "::")):
        frame = frame.replace(code, char)
    return frame


def main():
    report, channels = sys.argv[1], int(sys.argv[2])
    lines = open(report, encoding="utf-8").read().split("\n")
    sites = []  # (bytes, calls, allocator, caller)
    allocator = None
    i = 0
    while i < len(lines):
        match = HEADER.match(lines[i].strip())
        if not match:
            i += 1
            continue
        total, calls, is_trace = size(match[1]), int(match[2]), match[3] == ":"
        frames = []
        i += 1
        while i < len(lines) and lines[i].strip() and not HEADER.match(lines[i].strip()):
            text = lines[i].strip()
            if not text.startswith(("in ", "at ")):
                frames.append(demangle(text))
            i += 1
        if not is_trace:
            allocator = frames[0] if frames else "?"
            continue
        caller = next((f for f in frames if f.startswith(OURS) or "walkie" in f), frames[0] if frames else "?")
        sites.append((total, calls, allocator, caller))
    sites.sort(reverse=True)
    grand = sum(s[0] for s in sites)
    print(f"{'KiB/channel':>11} {'calls/ch':>8}  allocated in  <-  called from")
    for total, calls, allocator, caller in sites:
        per = total / channels / 1024
        if per < 0.25:
            break
        print(f"{per:11.2f} {calls / channels:8.1f}  {allocator[:70]}  <-  {caller[:90]}")
    print(f"{grand / channels / 1024:11.2f}          total of every site, per channel")


main()
