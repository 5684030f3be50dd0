#!/usr/bin/env python3
"""Self cost per function from a callgrind dump (callgrind_annotate mis-attributes dumps taken
after `callgrind_control --zero`). Usage: callgrind_top.py DUMP [N]"""
import re
import sys
from collections import defaultdict

names, cost = {}, defaultdict(int)
fn, skip = None, False
total = 0
for line in open(sys.argv[1], errors="replace"):
    line = line.rstrip("\n")
    m = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line)
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        fn = m.group(1)
        continue
    m = re.match(r"^c?fn=\((\d+)\) (.*)$", line)
    if m:
        names[m.group(1)] = m.group(2)
        continue
    if line.startswith("calls="):
        skip = True  # the next cost line is the call's inclusive cost
        continue
    if line and (line[0].isdigit() or line[0] in "+-*") and fn is not None:
        parts = line.split()
        if skip:
            skip = False
            continue
        if len(parts) >= 2:
            c = int(parts[1])
            cost[fn] += c
            total += c
n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
for k, v in sorted(cost.items(), key=lambda kv: -kv[1])[:n]:
    print(f"{100.0 * v / max(total, 1):5.1f}%  {v:>13,}  {names.get(k, k)[:150]}")


def callers(path, target):
    """Inclusive cost of calls to functions whose name contains `target`, by caller."""
    names, out = {}, defaultdict(int)
    fn = cfn = None
    pending = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"^(c?)fn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1):
                cfn = m.group(2)
            else:
                fn = m.group(2)
            continue
        if line.startswith("calls="):
            pending = True
            continue
        if pending:
            pending = False
            parts = line.split()
            if len(parts) >= 2 and target in names.get(cfn, ""):
                out[names.get(fn, fn)] += int(parts[1])
    for k, v in sorted(out.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{v:>13,}  {k[:160]}")
