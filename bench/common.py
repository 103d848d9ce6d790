"""Helpers shared by the bench/ scripts: free ports, a random-filled LUN file on tmpfs,
a tgtd started and configured on its own control port, medians, and rewriting one
marked section of BENCHMARKS.md."""
import os, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A benchmark stopped with SIGTERM (kill, pkill, a CI timeout) still runs its `finally`
# blocks: logs out, stops its daemon and target, removes its LUN files. Python's default
# SIGTERM action skips them and left a daemon, its FUSE mount and a loop device behind.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def listening(port):
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(p, timeout=30):
    """SIGTERM `p` (a daemon that cleans up on it), SIGKILL it if it has not ended in time."""
    p.terminate()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_for(cond, what, secs=10):
    """Poll `cond` every 50 ms; exit with a message naming `what` if it is not true in time."""
    for _ in range(int(secs / 0.05)):
        if cond():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


WQ_CPUMASK = "/sys/devices/virtual/workqueue/cpumask"


def confine_unbound_workqueues(cpu):
    """Confine the kernel's unbound workqueues (the loop device's worker among them) to
    `cpu`; returns the mask to give back to `restore_unbound_workqueues`.

    The loop driver hands each request to a worker on an unbound workqueue, which the
    scheduler places on any CPU: here, as often as not, on the target's CPU. Measured (1M
    writes QD8, 4 rounds each, A/B): with the worker on the client's CPU, fio through
    oxiscsid ran 4899-5742 MiB/s; left free, 3640-5010. A bench that says "client on CPU 0,
    target on CPU 1" keeps the client's kernel work on CPU 0 too. `cpu=None` leaves the
    mask alone and returns None."""
    if cpu is None:
        return None
    try:
        with open(WQ_CPUMASK) as f:
            old = f.read().strip()
        with open(WQ_CPUMASK, "w") as f:
            f.write(format(1 << int(cpu), "x"))
    except OSError as e:
        sys.exit(f"cannot confine the unbound workqueues to CPU {cpu} through {WQ_CPUMASK}: {e} "
                 "(run as root, or pass --loop-worker any)")
    return old


def restore_unbound_workqueues(old):
    if old is not None:
        with open(WQ_CPUMASK, "w") as f:
            f.write(old)


def med(rs, k):
    return statistics.median(r[k] for r in rs)


def make_lun(mib):
    """A file of `mib` MiB of random data on tmpfs; returns (dir, path)."""
    work = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    lun = os.path.join(work, "lun.img")
    with open(lun, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(mib):
            f.write(chunk)
    return work, lun


def remove_lun(work, lun):
    os.remove(lun)
    os.rmdir(work)


def start_tgtd(port, cpu, iqn, lun, preexec_fn=None):
    """tgtd pinned to `cpu` on 127.0.0.1:`port` serving `lun` as LUN 1 of `iqn` to all."""
    ctl = str(1000 + port % 30000)  # tgtd's control port must be <= 32767
    p = subprocess.Popen(["taskset", "-c", cpu, "tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{port}", "-C", ctl],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec_fn)
    try:
        for _ in range(200):
            if subprocess.run(["tgtadm", "-C", ctl, "--lld", "iscsi", "--op", "show", "--mode", "target"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.05)
        adm = ["tgtadm", "-C", ctl, "--lld", "iscsi"]
        sh(*adm, "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)
        sh(*adm, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun)
        sh(*adm, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p


def tgtd_version():
    return subprocess.run(["tgtd", "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()


def write_section(name, md):
    """Replace (or append) the section between <!-- NAME:begin --> and <!-- NAME:end -->."""
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{md}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    open(path, "w").write(text)
    print(f"updated {path}")
