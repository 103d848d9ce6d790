#!/usr/bin/env python3
"""The LUN as a host block device (oxiscsid: FUSE file + loop device) vs the same LUN
driven directly by `oxiscsi perf`, same target, same run, A/B interleaved.

    cargo build --release --bins
    python3 bench/blockdev_vs_perf.py [--rounds 5] [--seconds 4] [--write-md]

Our target (`oxiscsi target`, a random-filled file LUN on tmpfs) runs pinned to CPU 1.
The client side runs pinned to CPU 0: either `oxiscsi perf` (libiscsi-style user-space
initiator, no kernel block layer) or fio on /dev/loopN, whose I/O goes loop -> FUSE ->
oxiscsid -> the same initiator library -> TCP. The ratio perf/fio is the overhead of
the FUSE + loop path. fio runs with --direct=1 (loop in direct-I/O mode too), engines
psync (QD1 rows) and io_uring. Client CPU per IO counts the client processes only
(oxiscsid + fio, or oxiscsi perf). The loop device's worker, a kernel kworker, is kept on
the client's CPU too (`--loop-worker`, see common.confine_unbound_workqueues)."""
import argparse, json, os, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, confine_unbound_workqueues, free_port, listening, make_lun, med,  # noqa: E402
                    remove_lun, restore_unbound_workqueues, stop, wait_for, write_section)

REL = os.path.join(ROOT, "target", "release")
OX, OXD, ADM = (os.path.join(REL, b) for b in ("oxiscsi", "oxiscsid", "oxiscsiadm"))
IQN = "iqn.2026-11.bench:blockdev"
CLI_CPU, TGT_CPU = "0", "1"
HZ = os.sysconf("SC_CLK_TCK")

# name, bytes per IO, queue depth, random, write
ROWS = [
    ("4K random read QD1", 4096, 1, True, False),
    ("4K random read QD32", 4096, 32, True, False),
    ("1M sequential read QD8", 1 << 20, 8, False, False),
    ("1M sequential write QD8", 1 << 20, 8, False, True),
]


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / HZ


def perf(url, bs, qd, rnd, wr, secs):
    # The session driver oxiscsid serves the block devices with (a Poller on the caller's
    # thread), so the overhead is the FUSE + loop path's alone, not a different I/O loop's.
    c = ["taskset", "-c", CLI_CPU, OX, "perf", "--json", "--api", "poller", "-b", str(bs // 512), "-m", str(qd),
         "-t", str(secs)]
    if rnd:
        c.append("-r")
    if wr:
        c.append("--write")
    else:
        # Keep what is read, as fio's buffers do (perf drops reads by default, as iscsi-perf).
        c.append("--own-buffers")
    t0 = os.times()
    out = subprocess.run(c + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True).stdout
    t1 = os.times()
    iops = float(json.loads(out.strip().splitlines()[-1])["iops"])
    cpu_s = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return iops, cpu_s


def fio(dev, engine, bs, qd, rnd, wr, secs, daemon_pid):
    rw = ("randwrite" if wr else "randread") if rnd else ("write" if wr else "read")
    c = ["taskset", "-c", CLI_CPU, "fio", "--name=b", f"--filename={dev}", "--direct=1", f"--ioengine={engine}",
         f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", f"--runtime={secs}", "--time_based",
         "--output-format=json"]
    d0, t0 = cpu(daemon_pid), os.times()
    out = subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True).stdout
    d1, t1 = cpu(daemon_pid), os.times()
    job = json.loads(out)["jobs"][0]["write" if wr else "read"]
    cpu_s = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system) + (d1 - d0)
    return float(job["iops"]), cpu_s


def start_target(port, lun):
    """Our target on TGT_CPU serving `lun` as LUN 1 of IQN on 127.0.0.1:`port`."""
    return subprocess.Popen(["taskset", "-c", TGT_CPU, OX, "target", "--listen", f"127.0.0.1:{port}", "--iqn", IQN,
                             "--lun", f"1:{lun}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_daemon_logged_in(root, port):
    """oxiscsid on CLI_CPU under `root`, logged in to the target on `port`: (daemon, its
    loop device for LUN 1, a function running oxiscsiadm against it)."""
    adm = lambda *x: subprocess.run([ADM, "--root", root, *x], check=True, stdout=subprocess.DEVNULL)
    wait_for(lambda: listening(port), f"the target on port {port}")
    daemon = subprocess.Popen(["taskset", "-c", CLI_CPU, OXD, "-f", "--root", root],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(os.path.join(root, "run", "oxiscsid.sock")), "oxiscsid's socket")
        adm("-m", "discovery", "-t", "st", "-p", f"127.0.0.1:{port}")
        adm("-m", "node", "-T", IQN, "-l")
        dev = os.readlink(os.path.join(root, "run", "by-path", f"ip-127.0.0.1:{port}-iscsi-{IQN}-lun-1"))
    except BaseException:
        # The caller has no handle on it yet: stop it here (it logs out on SIGTERM).
        stop(daemon)
        raise
    return daemon, dev, adm


def stop_all(daemon, tgt, work, lun, root, wq):
    """Stop the daemon (it logs out and detaches its devices) and the target, remove the LUN
    and the daemon's root, give the unbound workqueues their mask back."""
    if daemon:
        stop(daemon)
    tgt.kill()
    tgt.wait()
    remove_lun(work, lun)
    subprocess.run(["rm", "-rf", root])
    restore_unbound_workqueues(wq)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--lun-mib", type=int, default=1024)
    ap.add_argument("--write-md", action="store_true")
    ap.add_argument("--only", default="", help="run only the rows whose name contains this text")
    ap.add_argument("--loop-worker", choices=("client", "any", "both"), default="client",
                    help="client: confine the kernel's unbound workqueues (the loop device's worker) to the "
                         "client's CPU for the run; any: leave them where the scheduler puts them; both: "
                         "measure fio both ways, interleaved (extra rows)")
    a = ap.parse_args()
    for b in (OX, OXD, ADM):
        if not os.path.exists(b):
            sys.exit(f"build first: {b} is missing (cargo build --release --bins)")
    work, lun = make_lun(a.lun_mib)
    port = free_port()
    root = tempfile.mkdtemp(prefix="oxbench-")
    tgt = start_target(port, lun)
    daemon = None
    rows = []
    wq = None
    try:
        wq = confine_unbound_workqueues(None if a.loop_worker == "any" else CLI_CPU)
        daemon, dev, adm = start_daemon_logged_in(root, port)
        url = f"iscsi://127.0.0.1:{port}/{IQN}/1"
        for name, bs, qd, rnd, wr in ROWS:
            if a.only not in name:
                continue
            kinds = ["perf", "io_uring"] + (["psync"] if qd == 1 else [])
            if a.loop_worker == "both":
                kinds += [k + FREE for k in kinds[1:]]
            res = {k: [] for k in kinds}
            for i in range(a.rounds):
                order = kinds if i % 2 == 0 else list(reversed(kinds))
                for k in order:
                    if k == "perf":
                        iops, c = perf(url, bs, qd, rnd, wr, a.seconds)
                    elif k.endswith(FREE):
                        restore_unbound_workqueues(wq)
                        try:
                            iops, c = fio(dev, k[:-len(FREE)], bs, qd, rnd, wr, a.seconds, daemon.pid)
                        finally:
                            confine_unbound_workqueues(CLI_CPU)
                    else:
                        iops, c = fio(dev, k, bs, qd, rnd, wr, a.seconds, daemon.pid)
                    res[k].append({"iops": iops, "mib": iops * bs / (1 << 20),
                                   "cpu_us": c * 1e6 / max(iops * a.seconds, 1)})
            rows.append((name, bs, res))
            for k in kinds:
                print(f"  {k} rounds (IOPS, cpu us/IO): "
                      + ", ".join(f"{r['iops']:.0f} {r['cpu_us']:.1f}" for r in res[k])
                      + ("" if k == "perf" else " | perf/this per round: "
                         + ", ".join(f"{p['iops'] / max(r['iops'], 1):.2f}" for p, r in zip(res["perf"], res[k]))),
                      flush=True)
            print(name + ": " + " | ".join(f"{k} {med(res[k], 'iops'):.0f} IOPS {med(res[k], 'cpu_us'):.1f} us/IO"
                                           for k in kinds), flush=True)
        adm("-m", "node", "-T", IQN, "-u")
    finally:
        stop_all(daemon, tgt, work, lun, root, wq)
    md = render(rows, a)
    print(md)
    if a.write_md:
        write_section("blockdev-vs-perf", md)


LOOP_WORKER = {
    "client": "and so is the loop device's worker (the kernel's unbound workqueues confined to CPU 0 for the run)",
    "any": "the loop device's worker where the scheduler puts it (either CPU)",
    "both": "and so is the loop device's worker (the kernel's unbound workqueues confined to CPU 0), except in "
            "the rows marked 'loop worker free', measured in the same rounds with the workqueues' mask as found",
}
# The fio kinds measured with the loop device's worker left where the scheduler puts it.
FREE = "@free"


def per_round(perf_rs, fio_rs):
    """The median over the rounds of perf's throughput / fio's in the same round."""
    return statistics.median(p["iops"] / max(f["iops"], 1) for p, f in zip(perf_rs, fio_rs))


def render(rows, a):
    fio_v = subprocess.run(["fio", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    L = [
        "## Block device: fio on the loop device (oxiscsid FUSE + loop) vs `oxiscsi perf` on the same LUN",
        "",
        f"Same run, A/B interleaved, {a.rounds} rounds x {a.seconds} s, medians and, in brackets, the "
        "median over the rounds of each round's ratio (this VM has phases in which the same binary runs up to 2x "
        "slower; the two medians can land in different phases, the two sides of one round run one after the other; "
        "per-round numbers are printed by the script); our target on CPU 1, "
        f"client (oxiscsid + fio, or oxiscsi perf) on CPU 0, {LOOP_WORKER[a.loop_worker]}; {fio_v}, "
        f"--direct=1; LUN: {a.lun_mib} MiB file on tmpfs. `oxiscsi perf --api poller --own-buffers` (the "
        "session driver oxiscsid uses; reads kept, as fio keeps them). "
        "Overhead = perf throughput / fio throughput (1.00 = none). "
        "CPU us/IO: client user+system time per IO (oxiscsid included for fio).",
        "",
        "| workload | oxiscsi perf | fio io_uring | overhead (per round) | fio psync | overhead (per round) "
        "| CPU us/IO perf / fio io_uring |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, bs, res in rows:
        unit = (lambda r: f"{med(r, 'mib'):.0f} MiB/s") if bs >= 1 << 20 else (lambda r: f"{med(r, 'iops'):.0f} IOPS")
        p = med(res["perf"], "iops")

        def over(k):
            return f"{p / med(res[k], 'iops'):.2f}x ({per_round(res['perf'], res[k]):.2f}x)"

        for sfx, label in (("", name), (FREE, name + ", loop worker free")):
            if "io_uring" + sfx not in res:
                continue
            ps = f"{unit(res['psync' + sfx])} | {over('psync' + sfx)}" if "psync" + sfx in res else "- | -"
            L.append(f"| {label} | {unit(res['perf'])} | {unit(res['io_uring' + sfx])} | {over('io_uring' + sfx)} "
                     f"| {ps} | {med(res['perf'], 'cpu_us'):.1f} / {med(res['io_uring' + sfx], 'cpu_us'):.1f} |")
    L += ["", "Commands: `cargo build --release --bins && python3 bench/blockdev_vs_perf.py "
          f"--rounds {a.rounds} --seconds {a.seconds} --lun-mib {a.lun_mib}"
          + ("" if a.loop_worker == "client" else f" --loop-worker {a.loop_worker}")
          + (f" --only '{a.only}'" if a.only else "") + " --write-md`"]
    return "\n".join(L)


if __name__ == "__main__":
    main()
