"""A small REPL for `agents.repl` tests: its prompt is ``>>> ``; the line ``go`` answers slowly,
showing the prompt marker mid-output and redrawing a progress line with carriage returns.

Usage: python scripted_repl.py PAUSE_S [paste]  (the pause between chunks; the long pause,
with no marker on the last line, is three times it). With ``paste`` it turns bracketed paste
on, as readline 8.1 and TUIs do, and says whether a line came as one paste.
"""

from __future__ import annotations

import sys
import time


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main() -> None:
    pause_s = float(sys.argv[1])
    is_pasting = sys.argv[2:] == ["paste"]
    while True:
        _say("\x1b[?2004h>>> " if is_pasting else ">>> ")
        line = sys.stdin.readline()
        if not line:
            return
        if line.startswith("\x1b[200~") and line.rstrip("\n").endswith("\x1b[201~"):
            _say(f"pasted: {line.rstrip(chr(10))[6:-6]}\n")
            continue
        if line.strip() != "go":
            _say(f"echo: {line.strip()}\n")
            continue
        _say("step 1\n>>> \n")  # the marker, mid-output, as the last non-empty line
        time.sleep(pause_s)
        for n in range(1, 4):
            _say(f"\rworking {n}/3")  # one line, redrawn
            time.sleep(pause_s)
        _say("\n>>> ")  # the marker again, but more is coming
        time.sleep(pause_s)
        _say("\nthinking hard")
        time.sleep(3 * pause_s)  # quiet longer than idle_s, but no marker showing
        _say("\ndone\n")


if __name__ == "__main__":
    main()
