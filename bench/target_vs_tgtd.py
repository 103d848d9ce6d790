#!/usr/bin/env python3
"""oxiscsi's target vs tgtd, serving the same LUN file, driven by the same initiators,
interleaved A/B in one run. A benchmark, not a test.

Both targets run at once on free loopback ports, pinned to the same CPU; the load
generators run on the other CPU. Reads: libiscsi's iscsi-perf. Writes: `oxiscsi perf
--write` (no libiscsi write load tool exists here). Logins: the login_storm example
(N sessions at once). Target CPU per I/O and per login comes from the target process's
utime+stime (/proc/PID/stat) around each run. Writes the table into BENCHMARKS.md
between the markers with --write-md.

    cargo build --release -p oxiscsi-cli
    cargo build --release -p oxiscsi-initiator --example login_storm
    python3 bench/target_vs_tgtd.py [--rounds 3] [--seconds 5] [--write-md]
    (BENCH_LOGINS=200,1000,2000 sets the login rows; a smaller list for a quick smoke run)
"""
import argparse, json, os, re, resource, subprocess, sys, time

from common import ROOT, free_port, make_lun, med, remove_lun, start_tgtd, tgtd_version, write_section

OX = os.path.join(ROOT, "target", "release", "oxiscsi")
STORM = os.path.join(ROOT, "target", "release", "examples", "login_storm")
IQN = "iqn.2026-11.rs.oxiscsi:bench"
TGT_CPU, INI_CPU = "1", "0"
HZ = os.sysconf("SC_CLK_TCK")

READS = [  # name, blocks of 512 B, queue depth, random
    ("4K random read QD32", 8, 32, True),
    ("4K random read QD128", 8, 128, True),
    ("128K seq read QD8", 256, 8, False),
    ("1M seq read QD8", 2048, 8, False),
]
WRITES = [
    ("4K random write QD32", 8, 32, True),
    ("1M seq write QD8", 2048, 8, False),
]
LOGINS = [int(n) for n in os.environ.get("BENCH_LOGINS", "200,1000,2000").split(",")]


def nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ


def iscsi_perf(url, blocks, qd, rnd, secs):
    c = ["taskset", "-c", INI_CPU, "iscsi-perf", "-b", str(blocks), "-m", str(qd), "-t", str(secs)]
    if rnd:
        c.append("-r")
    out = subprocess.run(c + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    m = re.findall(r"iops average (\d+)", out.replace("\r", "\n"))
    if not m:
        raise RuntimeError("iscsi-perf: " + out[-300:])
    return float(m[-1])


def ox_write(url, blocks, qd, rnd, secs):
    c = ["taskset", "-c", INI_CPU, OX, "perf", "--json", "--write", "-b", str(blocks), "-m", str(qd), "-t", str(secs)]
    if rnd:
        c.append("-r")
    out = subprocess.run(c + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["iops"])


def measure(pid, fn, *args):
    c0, t0 = cpu(pid), time.monotonic()
    iops = fn(*args)
    c1, t1 = cpu(pid), time.monotonic()
    ios = iops * args[-1]
    return {"iops": iops, "cpu_us": (c1 - c0) * 1e6 / max(ios, 1), "cores": (c1 - c0) / (t1 - t0)}


def storm(portal, n, pid):
    out = subprocess.run(["taskset", "-c", INI_CPU, STORM, portal, IQN, str(n), str(pid)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                         preexec_fn=nofile).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--lun-mib", type=int, default=1024)
    ap.add_argument("--write-md", action="store_true")
    a = ap.parse_args()
    for b in (OX, STORM):
        if not os.path.exists(b):
            sys.exit(f"build first: {b} is missing (see the docstring)")
    work, lun = make_lun(a.lun_mib)
    tp, op = free_port(), free_port()
    oxt = subprocess.Popen(["taskset", "-c", TGT_CPU, OX, "target", "--listen", f"127.0.0.1:{op}", "--iqn", IQN,
                            "--lun", f"1:{lun}", "--max-logins", "4096"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=nofile)
    tgtd = None
    try:
        tgtd = start_tgtd(tp, TGT_CPU, IQN, lun, preexec_fn=nofile)
        time.sleep(0.3)
        who = {"ox": (oxt.pid, f"127.0.0.1:{op}"), "tgt": (tgtd.pid, f"127.0.0.1:{tp}")}
        url = lambda k: f"iscsi://{who[k][1]}/{IQN}/1"
        rows = []
        for kind, table, fn in (("read", READS, iscsi_perf), ("write", WRITES, ox_write)):
            for name, blocks, qd, rnd in table:
                res = {"ox": [], "tgt": []}
                for i in range(a.rounds):
                    for k in (["ox", "tgt"] if i % 2 == 0 else ["tgt", "ox"]):
                        res[k].append(measure(who[k][0], fn, url(k), blocks, qd, rnd, a.seconds))
                rows.append((name, res))
                print(f"{name}: oxiscsi {med(res['ox'], 'iops'):.0f} IOPS {med(res['ox'], 'cpu_us'):.1f} us/IO | "
                      f"tgtd {med(res['tgt'], 'iops'):.0f} IOPS {med(res['tgt'], 'cpu_us'):.1f} us/IO", flush=True)
        logins = []
        for n in LOGINS:
            res = {"ox": [], "tgt": []}
            for i in range(a.rounds):
                for k in (["ox", "tgt"] if i % 2 == 0 else ["tgt", "ox"]):
                    res[k].append(storm(who[k][1], n, who[k][0]))
                    time.sleep(1.0)  # let logouts finish
            logins.append((n, res))
            print(f"{n} logins: oxiscsi {med(res['ox'], 'seconds'):.2f} s failed {max(r['failed'] for r in res['ox'])} | "
                  f"tgtd {med(res['tgt'], 'seconds'):.2f} s failed {max(r['failed'] for r in res['tgt'])}", flush=True)
    finally:
        for p in (tgtd, oxt):
            if p:
                p.kill()
                p.wait()
        remove_lun(work, lun)
    md = render(rows, logins, a)
    print(md)
    if a.write_md:
        write_section("target-vs-tgtd", md)

def render(rows, logins, a):
    tgt = tgtd_version()
    L = [
        "## Target: oxiscsi vs tgtd, same LUN file, same initiators, A/B interleaved",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine (kernel {os.uname().release}, "
        f"tgtd {tgt}), loopback. Both targets pinned to CPU {TGT_CPU} and serving one {a.lun_mib} MiB file on tmpfs; "
        f"load generators pinned to CPU {INI_CPU}. {a.rounds} rounds of {a.seconds} s per target and row, "
        "alternating which goes first; medians. Target CPU = the target process's utime+stime "
        "(/proc/PID/stat) during the run, per I/O or per login.",
        "",
        "| row | oxiscsi IOPS | tgtd IOPS | ratio | oxiscsi target CPU µs/IO | tgtd CPU µs/IO | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        oi, ti = med(r["ox"], "iops"), med(r["tgt"], "iops")
        oc, tc = med(r["ox"], "cpu_us"), med(r["tgt"], "cpu_us")
        L.append(f"| {name} | {oi:.0f} | {ti:.0f} | {oi / max(ti, 1):.2f} | {oc:.1f} | {tc:.1f} | {oc / max(tc, 1e-9):.2f} |")
    L += ["", "| concurrent logins | oxiscsi s (failed) | tgtd s (failed) | oxiscsi target CPU ms/login | tgtd CPU ms/login |",
          "|---:|---:|---:|---:|---:|"]
    for n, r in logins:
        of, tf = max(x["failed"] for x in r["ox"]), max(x["failed"] for x in r["tgt"])
        L.append(f"| {n} | {med(r['ox'], 'seconds'):.2f} ({of}) | {med(r['tgt'], 'seconds'):.2f} ({tf}) | "
                 f"{med(r['ox'], 'target_cpu_seconds') * 1000 / n:.2f} | {med(r['tgt'], 'target_cpu_seconds') * 1000 / n:.2f} |")
    L += ["", "Commands:", "", "```",
          f"python3 bench/target_vs_tgtd.py --rounds {a.rounds} --seconds {a.seconds} --write-md",
          "taskset -c 1 target/release/oxiscsi target --listen 127.0.0.1:PORT --iqn IQN --lun 1:/dev/shm/.../lun.img --max-logins 4096",
          "taskset -c 0 iscsi-perf -b 8 -m 32 -t 5 -r iscsi://127.0.0.1:PORT/IQN/1",
          "taskset -c 0 target/release/oxiscsi perf --json --write -b 8 -m 32 -t 5 -r iscsi://127.0.0.1:PORT/IQN/1",
          "taskset -c 0 target/release/examples/login_storm 127.0.0.1:PORT IQN 2000 TARGET_PID",
          "```"]
    return "\n".join(L)


if __name__ == "__main__":
    main()
