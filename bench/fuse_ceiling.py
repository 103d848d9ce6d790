#!/usr/bin/env python3
"""How close to `oxiscsi perf` can a FUSE + loop block device get on 1M sequential writes,
and how much of the gap is oxiscsid's? Same run, rounds interleaved:

- `oxiscsi perf --api poller --write` against our target (as in blockdev_vs_perf.py);
- fio on the loop device of oxiscsid's LUN file (the same target);
- fio on loop devices over `fuse_ceiling` servers (crates/oxiscsi-admin/examples/
  fuse_ceiling.rs): FUSE servers that move a WRITE's bytes to a TCP sink and answer it,
  no iSCSI, one thread; one per payload mode (read, copy, pool, splice; see the example);
- fio on a loop device over `fuse_ceiling ... iscsi`: the same one-thread FUSE loop
  driving an iSCSI session (a Poller) to the same target as oxiscsid.

    cargo build --release --bins --example fuse_ceiling -p oxiscsi-admin
    python3 bench/fuse_ceiling.py [--rounds 9] [--seconds 3] [--modes read,copy,pool,splice] [--write-md]

Client side (perf, oxiscsid, the ceiling servers, fio, and by default the loop devices'
workers: `--loop-worker`, as in blockdev_vs_perf.py) pinned to CPU 0; our target and the
sink pinned to CPU 1. The ceiling servers take WRITEs of up to 512 KiB (see the example),
oxiscsid up to 256 KiB. The per-round ratio perf/x is the metric: this VM's speed changes
between rounds (phases up to 2x), and the two sides of one round see the same phase."""
import argparse, os, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, confine_unbound_workqueues, free_port, listening, make_lun, wait_for,  # noqa: E402
                    write_section)
import blockdev_vs_perf as bd  # noqa: E402

CEIL = os.path.join(ROOT, "target", "release", "examples", "fuse_ceiling")
BS, QD = 1 << 20, 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--modes", default="read,copy,pool,splice,iscsi")
    ap.add_argument("--write-md", action="store_true")
    ap.add_argument("--loop-worker", choices=("client", "any"), default="client",
                    help="as in blockdev_vs_perf.py: confine the loop devices' worker to the client's CPU, or not")
    a = ap.parse_args()
    for b in (bd.OX, bd.OXD, bd.ADM, CEIL):
        if not os.path.exists(b):
            sys.exit(f"build first: {b} is missing "
                     "(cargo build --release --bins --example fuse_ceiling -p oxiscsi-admin)")
    modes = [m for m in a.modes.split(",") if m]
    work, lun = make_lun(1024)
    port, sink_port = free_port(), free_port()
    root = tempfile.mkdtemp(prefix="oxceil-")
    tgt = bd.start_target(port, lun)
    sink = subprocess.Popen(["taskset", "-c", bd.TGT_CPU, CEIL, "sink", f"127.0.0.1:{sink_port}"])
    daemon, servers, loops, mnts = None, [], [], []
    wq = None
    try:
        wq = confine_unbound_workqueues(bd.CLI_CPU if a.loop_worker == "client" else None)
        daemon, dev, adm = bd.start_daemon_logged_in(root, port)
        wait_for(lambda: listening(sink_port), f"the sink on port {sink_port}")
        devs = {"oxiscsid": (dev, daemon.pid)}
        for m in modes:
            mnt = tempfile.mkdtemp(prefix=f"ceil-{m}-")
            mnts.append(mnt)
            peer = f"iscsi://127.0.0.1:{port}/{bd.IQN}/1" if m == "iscsi" else f"127.0.0.1:{sink_port}"
            s = subprocess.Popen(["taskset", "-c", bd.CLI_CPU, CEIL, "serve", mnt, peer, m])
            servers.append(s)
            wait_for(lambda: subprocess.run(["mountpoint", "-q", mnt]).returncode == 0, f"the {m} server's mount")
            loop = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", os.path.join(mnt, "lun")],
                                  stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
            loops.append(loop)
            devs[f"ceiling {m}"] = (loop, s.pid)
        url = f"iscsi://127.0.0.1:{port}/{bd.IQN}/1"
        kinds = ["perf"] + list(devs)
        res = {k: [] for k in kinds}
        for i in range(a.rounds):
            for k in (kinds if i % 2 == 0 else list(reversed(kinds))):
                if k == "perf":
                    iops, _ = bd.perf(url, BS, QD, False, True, a.seconds)
                else:
                    iops, _ = bd.fio(devs[k][0], "io_uring", BS, QD, False, True, a.seconds, devs[k][1])
                res[k].append(iops * BS / (1 << 20))
            print(f"round {i}: " + ", ".join(f"{k} {res[k][-1]:.0f}" for k in kinds), flush=True)
        adm("-m", "node", "-T", bd.IQN, "-u")
    finally:
        for loop in loops:
            subprocess.run(["losetup", "-d", loop])
        for mnt in mnts:
            subprocess.run(["umount", mnt])
        for s in servers:
            try:
                s.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
        for mnt in mnts:
            os.rmdir(mnt)
        sink.kill()
        sink.wait()
        bd.stop_all(daemon, tgt, work, lun, root, wq)
    md = render(res, a)
    print(md)
    if a.write_md:
        write_section("fuse-ceiling", md)


def render(res, a):
    fio_v = subprocess.run(["fio", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    L = [
        "## The FUSE ceiling: 1M sequential writes QD8 through loop + one-thread FUSE servers",
        "",
        f"Same run, {a.rounds} rounds x {a.seconds} s, interleaved (order reversed every other round); "
        f"client side on CPU 0, {bd.LOOP_WORKER[a.loop_worker]}; our target and the TCP sink on CPU 1; "
        f"{fio_v} io_uring --direct=1. "
        "Ratio = `oxiscsi perf` MiB/s / this row's MiB/s in the same round (1.00 = no overhead), median "
        "and best of the rounds. `ceiling` rows: `fuse_ceiling` (crates/oxiscsi-admin/examples), which "
        "sends each WRITE's payload to a TCP sink and answers it (no iSCSI, no target), or with `iscsi` "
        "writes it to the same target as oxiscsid through a Poller on its one thread.",
        "",
        "| path | MiB/s median | ratio median | ratio best |",
        "|---|---|---|---|",
    ]
    for k, v in res.items():
        if k == "perf":
            L.append(f"| oxiscsi perf | {statistics.median(v):.0f} | 1.00 | 1.00 |")
            continue
        r = sorted(p / x for p, x in zip(res["perf"], v) if x > 0)
        L.append(f"| fio via {k} | {statistics.median(v):.0f} | {statistics.median(r):.2f} | {r[0]:.2f} |")
    L += ["", "Commands: `cargo build --release --bins --example fuse_ceiling -p oxiscsi-admin && "
          f"python3 bench/fuse_ceiling.py --rounds {a.rounds} --seconds {a.seconds} --modes {a.modes}"
          + ("" if a.loop_worker == "client" else " --loop-worker any") + " --write-md`"]
    return "\n".join(L)


if __name__ == "__main__":
    main()
