#!/usr/bin/env python3
"""Prints the README's configuration tables from the binaries' --help output.

Usage: cargo build --bins && scripts/config-table.py > /tmp/tables.md
(each binary's unit tests check that the README names every flag and variable).
"""
import re
import subprocess
import sys

BINARIES = ["hb-agent", "hb-bridge", "hb-collector"]


def options(help_text):
    """Yields (flag, env, default, doc) for each option in clap's long help."""
    blocks = re.split(r"\n(?=\s{2,6}(?:-\w, )?--)", help_text)
    for block in blocks:
        m = re.match(r"\s*(?:(-\w), )?(--[\w-]+)(?: <[^>]+>)?", block)
        if not m or m.group(2) in ("--help", "--version"):
            continue
        flag = (m.group(1) + ", " if m.group(1) else "") + m.group(2)
        env = re.search(r"\[env: (\w+)[=\]]", block)
        default = re.search(r"\[default: ([^\]]*)\]", block)
        body = block[m.end():]
        body = re.sub(r"\[(env|default|possible values)[^\]]*\]", "", body)
        body = re.sub(r"Possible values:.*", "", body, flags=re.S)
        doc = " ".join(body.split())
        yield flag, env.group(1) if env else "", default.group(1) if default else "", doc


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "target/debug"
    for b in BINARIES:
        text = subprocess.run([f"{target}/{b}", "--help"], capture_output=True, text=True, check=True).stdout
        print(f"#### `{b}`\n")
        print("| Flag | Environment | Default | Meaning |")
        print("|---|---|---|---|")
        for flag, env, default, doc in options(text):
            env = f"`{env}`" if env else ""
            default = f"`{default}`" if default else ""
            print(f"| `{flag}` | {env} | {default} | {doc.replace('|', '/')} |")
        print()


if __name__ == "__main__":
    main()
