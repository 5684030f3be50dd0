#!/usr/bin/env python3
"""The peak heap of a valgrind massif dump, by allocation site: each path of the peak
snapshot's tree is followed from the allocator down to its first frame in the gateway or in a
crate it calls (hyper, h2, tokio, rustls, ...), and the bytes are summed per such frame.

Usage: massif_top.py MASSIF_OUT [CONNECTIONS] [N]
  CONNECTIONS: also print bytes per connection.  N: rows (default 15)."""
import re
import sys

CRATES = ("muxgate::", "hyper::", "hyper_util::", "h2::", "tokio::", "tokio_rustls::",
          "rustls::", "moka::", "slab::", "http::", "bytes::", "tracing")
# Frames that only say "some allocation": keep walking towards the caller.
GENERIC = re.compile(r"(^|[ :<])(alloc|alloc_impl|alloc_impl_runtime|allocate|allocate_zeroed|"
                     r"try_allocate_in|with_capacity|with_capacity_in|with_capacity_zeroed_in|"
                     r"from_elem|reserve|reserve_inner|grow_one|grow_amortized|finish_grow|"
                     r"push|push_mut|new|pin|exchange_malloc|box_new|clone|to_vec|"
                     r"UnknownInlinedFun)\b")


def parse(path):
    """(peak snapshot's tree as [(depth, bytes, label)], total heap bytes)."""
    snaps, cur = [], None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("snapshot="):
            cur = {"tree": [], "heap": 0, "peak": False}
            snaps.append(cur)
        elif cur is None:
            continue
        elif line.startswith("mem_heap_B="):
            cur["heap"] = int(line.split("=")[1])
        elif line == "heap_tree=peak":
            cur["peak"] = True
        else:
            m = re.match(r"^( *)n(\d+): (\d+) (.*)$", line)
            if m:
                cur["tree"].append((len(m.group(1)), int(m.group(3)), m.group(4)))
    peak = [s for s in snaps if s["peak"]] or sorted(snaps, key=lambda s: s["heap"])[-1:]
    return peak[0]["tree"], peak[0]["heap"]


def frame(label):
    # "0x4BB230: name (file:line)" -> "name (file:line)"
    return re.sub(r"^0x[0-9A-Fa-f]+: ", "", label)


def interesting(label):
    f = frame(label)
    return any(c in f for c in CRATES) and not GENERIC.search(f.split(" (")[0].split("<")[0])


def main():
    tree, heap = parse(sys.argv[1])
    conns = int(sys.argv[2]) if len(sys.argv) > 2 and int(sys.argv[2]) > 0 else 0
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    sums = {}
    # Children of node i: the following nodes one level deeper until the depth falls back.
    def walk(i):
        depth, size, label = tree[i]
        if i > 0 and interesting(label):
            sums[frame(label)] = sums.get(frame(label), 0) + size
            return
        kids, j, covered = [], i + 1, 0
        while j < len(tree) and tree[j][0] > depth:
            if tree[j][0] == depth + 1:
                kids.append(j)
            j += 1
        for k in kids:
            if tree[k][2].startswith("in ") and "places" in tree[k][2]:
                continue  # massif's "below threshold" bucket
            covered += tree[k][1]
            walk(k)
        if i > 0 and size > covered:
            key = "(no crate frame) " + frame(label)[:80]
            sums[key] = sums.get(key, 0) + size - covered
    walk(0)
    print(f"peak heap {heap:,} B" + (f", {heap / conns / 1024:.1f} KiB per connection" if conns else ""))
    print()
    print("| bytes | share |" + (" per connection |" if conns else "") + " first crate frame |")
    print("| ---: | ---: |" + (" ---: |" if conns else "") + " --- |")
    for name, size in sorted(sums.items(), key=lambda kv: -kv[1])[:rows]:
        per = f" {size / conns:,.0f} B |" if conns else ""
        print(f"| {size:,} | {100 * size / heap:.1f} % |{per} `{name[:150]}` |")


main()
