#!/usr/bin/env python3
"""Every hb-agent, hb-bridge and hb-collector command line the README shows parses.

Finds the command lines in README.md's code blocks (continued lines joined, those in
comments included) and inline code, and runs each with the debug build and `--help`
appended: clap parses every argument before it reaches `--help`, so an unknown flag,
a misplaced sub-command or a bad value fails with exit code 2. Run by
scripts/test.sh after the build.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARIES = ("hb-agent", "hb-bridge", "hb-collector")
# The binary as the program run (at the start, after environment assignments, or
# after "…:" in a comment), followed by flags or a command.
COMMAND = re.compile(
    r"(?:^|[:(]\s*|^(?:\w+=\S+\s+)+)(?:target/\w+/)?(hb-agent|hb-bridge|hb-collector)"
    r"\s+((?:-|migrate\b|run\b)[^`)\n]*)"
)


def command_lines(readme: str):
    """(binary, argument string) for every command line shown."""
    found = []
    in_block = False
    joined = ""
    for line in readme.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            joined += line.rstrip("\\").strip() + " "
            if line.endswith("\\"):
                continue
            texts, joined = [joined.lstrip("# ").strip()], ""
        else:
            texts = re.findall(r"`([^`]+)`", line)
        for text in texts:
            for m in COMMAND.finditer(text):
                found.append((m.group(1), m.group(2).strip()))
    return found


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    commands = command_lines(readme)
    if not commands:
        print("check-readme-commands: no command lines found in README.md")
        return 1
    failed = 0
    for binary, args in commands:
        argv = [str(ROOT / "target" / "debug" / binary), *shlex.split(args), "--help"]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            failed += 1
            error = (r.stderr or r.stdout).strip().splitlines()
            print(f"README: `{binary} {args}` does not parse: {error[0] if error else r.returncode}")
    print(f"check-readme-commands: {len(commands) - failed} of {len(commands)} command lines parse")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
