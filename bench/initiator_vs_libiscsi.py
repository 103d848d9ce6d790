#!/usr/bin/env python3
"""oxiscsi perf vs libiscsi's iscsi-perf against the same tgtd, interleaved A/B.

Starts its own tgtd (pinned to one CPU) on a free loopback port with a LUN on tmpfs,
pre-filled with random data, then for every row runs both initiators (pinned to the
other CPU) alternately, ROUNDS times each, and writes the medians to BENCHMARKS.md
(between the markers) together with the exact commands. A benchmark, not a test.

    cargo build --release -p oxiscsi-cli
    python3 bench/initiator_vs_libiscsi.py [--rounds 3] [--seconds 5] [--instructions] [--write-md]
"""
import argparse, json, os, re, resource, shutil, subprocess, sys, tempfile, time

from common import ROOT, free_port, make_lun, med, remove_lun, start_tgtd, tgtd_version, write_section

OX = os.path.join(ROOT, "target", "release", "oxiscsi")
IQN = "iqn.2026-11.rs.oxiscsi:bench"
TGT_CPU, INI_CPU = "1", "0"

ROWS = [  # name, blocks of 512 B, queue depth, random
    ("4K random read QD1", 8, 1, True),
    ("4K random read QD32", 8, 32, True),
    ("128K seq read QD8", 256, 8, False),
    ("128K seq read QD32", 256, 32, False),
    ("1M seq read QD8", 2048, 8, False),
    ("1M seq read QD32", 2048, 32, False),
]
# Rows also run with reads kept in a buffer per I/O slot (oxiscsi perf --own-buffers), in
# the same rounds as the A/B pair.
OWN_ROWS = ("128K seq read QD8", "1M seq read QD8")
WRITE_ROWS = [
    ("4K random write QD32", 8, 32, True),
    ("1M seq write QD8", 2048, 8, False),
]


def wanted(only, name):
    return not only or any(part and part in name for part in only.split(","))


def run_child(cmd):
    """Run cmd, return (stdout, cpu seconds of the child, its context switches)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    csw = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    return p.stdout, cpu, csw


def ox_cmd(url, blocks, qd, rnd, secs, write=False, own=False, api=None):
    c = ["taskset", "-c", INI_CPU, OX, "perf", "--json", "-b", str(blocks), "-m", str(qd), "-t", str(secs)]
    if rnd:
        c.append("-r")
    if write:
        c.append("--write")
    if own:
        c.append("--own-buffers")
    if api:
        c += ["--api", api]
    return c + [url]


def lib_cmd(url, blocks, qd, rnd, secs):
    c = ["taskset", "-c", INI_CPU, "iscsi-perf", "-b", str(blocks), "-m", str(qd), "-t", str(secs)]
    if rnd:
        c.append("-r")
    return c + [url]


def run_ox(url, blocks, qd, rnd, secs, write=False, own=False, api=None):
    out, cpu, csw = run_child(ox_cmd(url, blocks, qd, rnd, secs, write, own, api))
    j = json.loads(out.strip().splitlines()[-1])
    return {"iops": j["iops"], "mibs": j["mib_per_s"], "cpu_us": cpu * 1e6 / max(j["ios"], 1),
            "cs_io": csw / max(j["ios"], 1), "cores": cpu / j["seconds"],
            "p50": j["lat_p50_us"], "p99": j["lat_p99_us"]}


def run_lib(url, blocks, qd, rnd, secs):
    t0 = time.monotonic()
    out, cpu, csw = run_child(lib_cmd(url, blocks, qd, rnd, secs))
    wall = time.monotonic() - t0
    m = re.findall(r"iops average (\d+) \((\d+) MB/s\)", out.replace("\r", "\n"))
    if not m:
        raise RuntimeError("no 'iops average' in iscsi-perf output: " + out[-300:])
    iops = float(m[-1][0])
    ios = iops * secs
    return {"iops": iops, "mibs": iops * blocks * 512 / 1048576, "cpu_us": cpu * 1e6 / max(ios, 1),
            "cs_io": csw / max(ios, 1), "cores": cpu / wall, "p50": None, "p99": None}


def perf_stat(cmd):
    """Run cmd under `perf stat`: (stdout, user instructions, kernel instructions)."""
    fd, path = tempfile.mkstemp(prefix="oxbench-perf-")
    os.close(fd)
    try:
        out, _, _ = run_child(["perf", "stat", "-x,", "-o", path, "-e", "instructions:u,instructions:k", "--"] + cmd)
        counts = {}
        for line in open(path):
            f = line.strip().split(",")
            if len(f) > 2 and f[0].isdigit():
                counts[f[2]] = int(f[0])
        return out, counts.get("instructions:u", 0), counts.get("instructions:k", 0)
    finally:
        os.unlink(path)


def instructions(url, blocks, qd, rnd, secs):
    """Instructions per I/O, user and kernel, of each initiator: a phase-free measure of
    how much work each does (CPU time moves with this VM's phases, instruction counts do
    not). Two runs per tool, `secs` and `2 * secs` long; the difference of their counts
    over the difference of their I/Os leaves out start-up and login."""
    def ox_ios(out, _secs):
        return json.loads(out.strip().splitlines()[-1])["ios"]

    def lib_ios(out, s):
        m = re.findall(r"iops average (\d+)", out.replace("\r", "\n"))
        if not m:
            raise RuntimeError("no 'iops average' in iscsi-perf output: " + out[-300:])
        return float(m[-1]) * s

    res = {}
    for who, mk, count in (("ox", ox_cmd, ox_ios), ("lib", lib_cmd, lib_ios)):
        pts = []
        for s in (secs, 2 * secs):
            out, u, k = perf_stat(mk(url, blocks, qd, rnd, s))
            pts.append((count(out, s), u, k))
        (n1, u1, k1), (n2, u2, k2) = pts
        dn = max(n2 - n1, 1)
        res[who] = ((u2 - u1) / dn, (k2 - k1) / dn)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--lun-mib", type=int, default=1024)
    ap.add_argument("--write-md", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--only", default="", help="run only the rows whose name contains one of these comma-separated texts")
    ap.add_argument("--instructions", action="store_true",
                    help="also count each initiator's user and kernel instructions per I/O (perf stat), "
                         "in separate runs after the timed rounds")
    a = ap.parse_args()
    if a.instructions and not shutil.which("perf"):
        sys.exit("--instructions needs perf (Debian: linux-perf)")
    if a.only and a.write_md:
        sys.exit("--only measures a subset: do not combine it with --write-md")
    if not os.path.exists(OX):
        sys.exit("build first: cargo build --release -p oxiscsi-cli")
    work, lun = make_lun(a.lun_mib)
    port = free_port()
    tgtd = None
    try:
        tgtd = start_tgtd(port, TGT_CPU, IQN, lun)
        url = f"iscsi://127.0.0.1:{port}/{IQN}/1"
        results, owns = [], []
        for name, blocks, qd, rnd in ROWS:
            if not wanted(a.only, name):
                continue
            runs = {"ox": [], "lib": [], "own": [], "queue": []}
            # "queue": the same load issued from one task through the completion queue
            # beside the session's driver task (oxiscsi perf --api queue) instead of from
            # a thread driving its own session (the default, --api poller).
            fns = [("ox", run_ox), ("lib", run_lib), ("queue", lambda *x: run_ox(*x, api="queue"))]
            if name in OWN_ROWS:
                fns.append(("own", lambda *x: run_ox(*x, own=True)))
            for i in range(a.rounds):
                k = i % len(fns)  # rotate who goes first
                for who, fn in fns[k:] + fns[:k]:
                    runs[who].append(fn(url, blocks, qd, rnd, a.seconds))
            ox, lib = runs["ox"], runs["lib"]
            insn = instructions(url, blocks, qd, rnd, a.seconds) if a.instructions else None
            if insn:
                print(f"  instructions per I/O, user / kernel: oxiscsi {insn['ox'][0]:.0f} / {insn['ox'][1]:.0f}, "
                      f"iscsi-perf {insn['lib'][0]:.0f} / {insn['lib'][1]:.0f}", flush=True)
            results.append((name, ox, lib, insn, runs["queue"]))
            if runs["own"]:
                owns.append((name, runs["own"], ox))
            for who in ("ox", "lib", "own", "queue"):
                if runs[who]:
                    print(f"  {who} rounds (cpu us/IO, context switches/IO): "
                          + ", ".join(f"{r['cpu_us']:.1f} {r['cs_io']:.2f}" for r in runs[who]), flush=True)
            print(f"{name}: oxiscsi {med(ox, 'iops'):.0f} IOPS {med(ox, 'cpu_us'):.1f} us/IO | "
                  f"iscsi-perf {med(lib, 'iops'):.0f} IOPS {med(lib, 'cpu_us'):.1f} us/IO"
                  + f" | --api queue {med(runs['queue'], 'cpu_us'):.1f} us/IO"
                  + (f" | own buffers {med(runs['own'], 'cpu_us'):.1f} us/IO" if runs["own"] else ""), flush=True)
        writes = []
        for name, blocks, qd, rnd in WRITE_ROWS:
            if not wanted(a.only, name):
                continue
            ox = [run_ox(url, blocks, qd, rnd, a.seconds, write=True) for _ in range(a.rounds)]
            writes.append((name, ox))
            print(f"{name}: oxiscsi {med(ox, 'iops'):.0f} IOPS {med(ox, 'mibs'):.0f} MiB/s", flush=True)
    finally:
        if tgtd:
            tgtd.kill()
            tgtd.wait()
        remove_lun(work, lun)
    ipf = iperf_ceiling()
    md = render(results, owns, writes, a, ipf)
    print(md)
    if a.write_md:
        write_section("initiator-vs-libiscsi", md)

def iperf_ceiling():
    try:
        srv = subprocess.Popen(["taskset", "-c", TGT_CPU, "iperf3", "-s", "-1", "-p", "5299"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        out = subprocess.run(["taskset", "-c", INI_CPU, "iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", "3", "-J"],
                             stdout=subprocess.PIPE, text=True).stdout
        srv.wait(timeout=10)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 1048576
    except Exception as e:  # iperf3 missing or failed: report without the ceiling
        print("iperf3 ceiling not measured:", e, file=sys.stderr)
        return None


def best(rs):
    """The lowest CPU per I/O over the rounds."""
    return min(r["cpu_us"] for r in rs)


def render(results, owns, writes, a, ipf):
    kern = os.uname().release
    tgt = tgtd_version()
    lines = [
        f"## Initiator: oxiscsi vs libiscsi (iscsi-perf), same tgtd, A/B interleaved",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine (kernel {kern}, tgtd {tgt}), "
        f"loopback. tgtd pinned to CPU {TGT_CPU}, the initiator under test to CPU {INI_CPU} (`taskset`). "
        f"LUN: {a.lun_mib} MiB file on tmpfs pre-filled with random data, tgtd defaults. "
        f"{a.rounds} rounds of {a.seconds} s per initiator and row, rotating which goes first; medians shown. "
        "CPU is the initiator process's user+system time per I/O (getrusage of the child): the median over the "
        "rounds and, in brackets, the best round. The best round is the fairer comparison of what each initiator "
        "costs: this VM switches between phases in which the same binary's CPU per I/O differs by up to 2x "
        "(the slow phase also shows fewer context switches per I/O; its cause is not known), for either "
        "initiator, and a median of a few rounds can land in different phases for the two. Per-round numbers "
        "are printed by the script."
        + (f" Loopback TCP ceiling (iperf3, same pinning): {ipf:.0f} MiB/s." if ipf else ""),
        "",
        "| row | oxiscsi IOPS | iscsi-perf IOPS | ratio | oxiscsi MiB/s | iscsi-perf MiB/s | oxiscsi CPU µs/IO (best) | iscsi-perf CPU µs/IO (best) | CPU ratio, best rounds | oxiscsi p50 / p99 µs | `--api queue` IOPS | `--api queue` CPU µs/IO (best) | `--api queue` CPU ratio, best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ox, lib, _, tk in results:
        lines.append(
            f"| {name} | {med(ox, 'iops'):.0f} | {med(lib, 'iops'):.0f} | {med(ox, 'iops') / max(med(lib, 'iops'), 1):.2f} | "
            f"{med(ox, 'mibs'):.0f} | {med(lib, 'mibs'):.0f} | {med(ox, 'cpu_us'):.1f} ({best(ox):.1f}) | "
            f"{med(lib, 'cpu_us'):.1f} ({best(lib):.1f}) | {best(ox) / max(best(lib), 1e-9):.2f} | "
            f"{med(ox, 'p50'):.0f} / {med(ox, 'p99'):.0f} | {med(tk, 'iops'):.0f} | "
            f"{med(tk, 'cpu_us'):.1f} ({best(tk):.1f}) | {best(tk) / max(best(lib), 1e-9):.2f} |")
    counted = [(name, insn) for name, _, _, insn, _ in results if insn]
    if counted:
        lines += ["", "Instructions per I/O (`--instructions`: `perf stat -e instructions:u,instructions:k`, separate "
                  f"runs of {a.seconds} s and {2 * a.seconds} s per tool, the difference of the counts over the "
                  "difference of the I/Os, so start-up and login are left out). Unlike CPU time these do not move "
                  "with the VM's phases; they show which side of the system call boundary a CPU gap is on. "
                  "Hardware counters make this VM's context switches slower, so these runs are not timed.", "",
                  "| row | oxiscsi user | iscsi-perf user | oxiscsi kernel | iscsi-perf kernel | total ratio |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, insn in counted:
            (ou, ok), (lu, lk) = insn["ox"], insn["lib"]
            lines.append(f"| {name} | {ou:.0f} | {lu:.0f} | {ok:.0f} | {lk:.0f} | {(ou + ok) / max(lu + lk, 1):.2f} |")
    lines += ["", "`oxiscsi perf` keeps its `-m` commands in flight from one thread that drives its own session "
              "(`Poller`: submit, then `service` writes, reads the socket, runs the timers and hands back what "
              "finished), as iscsi-perf does from libiscsi's event loop. The `--api queue` columns run the same "
              "load, in the same rounds, from one task through the completion queue (`Session::queue`) beside "
              "the session's driver task: what a tokio program that keeps many commands in flight uses."]
    lines += ["", "Both tools drop what they read: iscsi-perf lands every read in one shared buffer, "
              "`oxiscsi perf` checks each read's data (order, length, digests) and drops it "
              "(`Session::execute_discard`, large payloads all placed in one scratch buffer). Reads kept in a "
              "buffer per I/O slot (`--own-buffers`, what an application that keeps its data pays):", "",
              "| row (same rounds as above) | own buffers MiB/s | dropped MiB/s | own buffers CPU µs/IO | dropped CPU µs/IO |",
              "|---|---:|---:|---:|---:|"]
    for name, own, ox in owns:
        lines.append(f"| {name} | {med(own, 'mibs'):.0f} | {med(ox, 'mibs'):.0f} | {med(own, 'cpu_us'):.1f} | "
                     f"{med(ox, 'cpu_us'):.1f} |")
    lines += ["", "Writes (oxiscsi only: no libiscsi write load tool is available here — Debian's fio lacks the "
              "libiscsi engine, libiscsi-bin has no iscsi-dd, and qemu's iSCSI block driver package (7.2) does not "
              "match the machine's qemu-img 10.0.2, so `qemu-img bench -w` cannot reach iSCSI):", "",
              "| row | oxiscsi IOPS | oxiscsi MiB/s | CPU µs/IO | p50 / p99 µs |", "|---|---:|---:|---:|---:|"]
    for name, ox in writes:
        lines.append(f"| {name} | {med(ox, 'iops'):.0f} | {med(ox, 'mibs'):.0f} | {med(ox, 'cpu_us'):.1f} | "
                     f"{med(ox, 'p50'):.0f} / {med(ox, 'p99'):.0f} |")
    lines += ["", "Commands (URL = iscsi://127.0.0.1:PORT/" + IQN + "/1):", "", "```",
              "python3 bench/initiator_vs_libiscsi.py --rounds %d --seconds %d%s --write-md"
              % (a.rounds, a.seconds, " --instructions" if counted else ""),
              "# per row, e.g. 4K random read QD32:",
              " ".join(ox_cmd("URL", 8, 32, True, a.seconds)).replace(ROOT + "/", ""),
              " ".join(lib_cmd("URL", 8, 32, True, a.seconds)),
              "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
