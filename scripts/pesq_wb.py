#!/usr/bin/env python3
"""Wideband PESQ (ITU-T P.862.2) of degraded speech against its reference.

    scripts/pesq_wb.py REFERENCE.wav DEGRADED.wav [DEGRADED.wav ...]

Prints one line per degraded file: "<MOS-LQO> <path>". Both files are mono 16-bit
WAV at 16 kHz; the degraded one may be longer or shifted (PESQ aligns it itself).
Runs in .venv-bench (scripts/pesq.sh makes it); benches call it, tests do not.
"""
import sys
import wave

import numpy as np
from pesq import pesq


def read(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != 16000:
            sys.exit(f"{path}: need mono 16-bit 16 kHz WAV")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    reference = read(sys.argv[1])
    for path in sys.argv[2:]:
        degraded = read(path)
        print(f"{pesq(16000, reference, degraded, 'wb'):.3f} {path}", flush=True)


if __name__ == "__main__":
    main()
