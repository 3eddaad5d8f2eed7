#!/usr/bin/env python3
"""Runs one load (an oha command) and records what it cost: the CPU the processes under
test used meanwhile (utime+stime from /proc, their threads and child processes included),
the client's own CPU (rusage of the oha process), and the wall time. Used by bench/perf.sh.

  measure.py load OUT.json PIDS -- oha ARGS...   (PIDS: comma-separated; their children count too)
  measure.py report cpu|bulk FILES... OURS/PEER... (the tables from the OUT.json files, and ratios)
  measure.py udp TRACE                           (from `strace -v`: syscalls, GSO and GRO use)
"""
import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime+stime of a process and its live children (nginx workers), in seconds."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(cpu_seconds(int(c)) for c in f.read().split())
        except FileNotFoundError:
            pass
    return total


def load(out, pids, cmd):
    pids = [int(p) for p in pids.split(",") if p]
    before = sum(cpu_seconds(p) for p in pids)
    start = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    stdout, _ = child.communicate()
    # The client's CPU: communicate() has reaped it, so read its rusage from the
    # children's totals (oha is the only child this process waits for).
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - start
    after = sum(cpu_seconds(p) for p in pids)
    result = json.loads(stdout)
    result["measure"] = {
        "server_cpu_s": after - before,
        "client_cpu_s": ru.ru_utime + ru.ru_stime,
        "wall_s": wall,
        "loadavg": os.getloadavg()[0],
        "cmd": cmd,
    }
    with open(out, "w") as f:
        json.dump(result, f)


def figures(path):
    r = json.load(open(path))
    m = r["measure"]
    ok = r["statusCodeDistribution"].get("200", 0)
    lat = r.get("latencyPercentiles", {})
    secs = m["wall_s"]
    return {
        "ok": ok,
        # In-flight requests cut off when the load's time is up are not failures.
        "errors": sum(n for e, n in r.get("errorDistribution", {}).items() if "deadline" not in e),
        "error_kinds": [e for e in r.get("errorDistribution", {}) if "deadline" not in e],
        "rps": ok / secs,
        "p50": (lat.get("p50") or 0) * 1000,
        "p99": (lat.get("p99") or 0) * 1000,
        "server_us": m["server_cpu_s"] / ok * 1e6 if ok else float("nan"),
        "server_cores": m["server_cpu_s"] / secs,
        "client_cores": m["client_cpu_s"] / secs,
        "gbits": r["summary"].get("totalData", 0) * 8 / secs / 1e9,
        "loadavg": m["loadavg"],
    }


def report(kind, paths, ratios):
    # Files are named NAME.json; `ratios` are "OURS/PEER" names.
    rows = [(os.path.basename(p)[:-5], figures(p)) for p in paths]
    if kind == "cpu":
        print(f"{'':22}{'200/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'µs CPU/req':>11}{'srv cores':>10}{'oha cores':>10}{'errors':>7}{'load1':>6}")
        for name, f in rows:
            print(f"{name:22}{f['rps']:9.0f}{f['p50']:8.2f}{f['p99']:8.2f}{f['server_us']:11.1f}"
                  f"{f['server_cores']:10.2f}{f['client_cores']:10.2f}{f['errors']:7d}{f['loadavg']:6.1f}")
    else:
        print(f"{'':22}{'Gbit/s':>8}{'responses':>10}{'srv cores':>10}{'oha cores':>10}{'errors':>7}{'load1':>6}")
        for name, f in rows:
            print(f"{name:22}{f['gbits']:8.2f}{f['ok']:10d}{f['server_cores']:10.2f}{f['client_cores']:10.2f}"
                  f"{f['errors']:7d}{f['loadavg']:6.1f}")
    for name, f in rows:
        if f["errors"]:
            print(f"  {name} errors: {'; '.join(f['error_kinds'])[:300]}")
    by = dict(rows)
    for pair in ratios:
        ours, peer = pair.split("/")
        if ours not in by or peer not in by:
            continue
        f, p = by[ours], by[peer]
        if kind == "cpu":
            print(f"ratio {ours}/{peer}: throughput {f['rps'] / p['rps']:.2f}x, p99 {f['p99'] / p['p99']:.2f}x, "
                  f"CPU per request {f['server_us'] / p['server_us']:.2f}x")
        else:
            print(f"ratio {ours}/{peer}: throughput {f['gbits'] / p['gbits']:.2f}x")


def udp(path):
    """From a `strace -v` log: UDP sends and receives, and how GSO and GRO were used.
    strace prints UDP_SEGMENT and UDP_GRO as cmsg types 0x67 and 0x68."""
    import re
    sends = sent = gso = receives = gro = 0
    for line in open(path, errors="replace"):
        if " sendmsg(" in line:
            sends += 1
            m = re.search(r"iov_len=(\d+)", line)
            sent += int(m.group(1)) if m else 0
            gso += "cmsg_type=0x67" in line or "UDP_SEGMENT" in line
        elif "recvmmsg(" in line or " recvmsg(" in line:
            receives += 1
            gro += line.count("cmsg_type=0x68") + line.count("UDP_GRO")
    print(f"sendmsg: {sends} calls, {gso} with UDP_SEGMENT (GSO), {sent // max(sends, 1)} bytes per call "
          f"(about {sent / max(sends, 1) / 1452:.1f} full-size packets)")
    print(f"recvmmsg/recvmsg: {receives} calls, {gro} UDP_GRO cmsgs (the socket asks for GRO; a count near 0 "
          f"means nothing arrived coalesced: the inbound traffic is ACKs)")


if __name__ == "__main__":
    if sys.argv[1] == "load":
        sep = sys.argv.index("--")
        load(sys.argv[2], sys.argv[3], sys.argv[sep + 1:])
    elif sys.argv[1] == "udp":
        udp(sys.argv[2])
    elif sys.argv[1] == "report":
        args = sys.argv[3:]
        report(sys.argv[2], [a for a in args if a.endswith(".json")], [a for a in args if "/" in a and not a.endswith(".json")])
    else:
        sys.exit(__doc__)
