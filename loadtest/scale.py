#!/usr/bin/env python3
"""How Wharf's costs grow with the registry's size (issue 26).

For each metadata backend (redb + data folder; PostgreSQL + SeaweedFS) and
each size (manifests seeded through the API, spread over size/10
repositories, every tenth in one big repository, so it holds size/10
tags), measures: restart until /readyz, RSS at rest, metadata bytes per
manifest, manifest GET / blob HEAD / small push p99 at rest, paging the big
repository's tags and the catalog, retention planning over the big
repository, DELETE by digest in the big and in a small repository, online
GC (whole run, push p99 while it runs, peak RSS) and RSS after it, and
fsck of the data folder. Writes loadtest/last-scale.json and .txt and,
with matplotlib, charts into docs/performance/.

    python3 loadtest/scale.py                       10^4 and 10^5, both backends
    python3 loadtest/scale.py --sizes 10000,100000,1000000
    python3 loadtest/scale.py --smoke               10^4, redb, 64 clients (CI)

Needs what .ci/run installs: PostgreSQL, and `weed` (WHARF_WEED) for the
postgres backend.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHARF = os.environ.get("WHARF_BIN") or os.path.join(ROOT, "target/release/wharf")
LOAD = os.path.join(ROOT, "target/release/wharf-load")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def weed_port():
    # SeaweedFS also binds port + 10000 for gRPC.
    while True:
        p = free_port()
        if p >= 55000:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p + 10000))
            s.close()
            return p
        except OSError:
            s.close()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def http(method, url, timeout=600):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


def load(host, scenario, ops, clients, run, extra=()):
    """Runs wharf-load; returns its RESULT fields."""
    cmd = [LOAD, "--host", host, "--scenario", scenario, "--ops", str(ops),
           "--clients", str(clients), "--run", run, "--timeout", "3600", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"scale.py: {' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return {k: v for k, v in (f.split("=", 1) for f in line.split()[1:])}


class Services:
    """PostgreSQL and SeaweedFS for the postgres backend, started once."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []
        pgbin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.psql = os.path.join(pgbin, "psql")
        as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        pgdir = os.path.join(tmp, "pg")
        os.makedirs(pgdir)
        if os.getuid() == 0:
            shutil.chown(tmp, "postgres")
            shutil.chown(pgdir, "postgres")
        subprocess.run(as_pg + [os.path.join(pgbin, "initdb"), "-D", pgdir, "-U", "wharf",
                                "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        self.pgport = free_port()
        self.procs.append(subprocess.Popen(
            as_pg + [os.path.join(pgbin, "postgres"), "-D", pgdir, "-p", str(self.pgport),
                     "-h", "127.0.0.1", "-k", tmp, "-c", "max_connections=300",
                     "-c", "shared_buffers=256MB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            if self.sql("postgres", "select 1", check=False).returncode == 0:
                break
            time.sleep(0.1)
        weed = os.environ.get("WHARF_WEED") or shutil.which("weed")
        if not weed:
            sys.exit("scale.py: the postgres backend needs weed (WHARF_WEED)")
        self.weed = weed
        wp = [weed_port() for _ in range(5)]
        self.wp = wp
        os.makedirs(os.path.join(tmp, "weed"))
        os.makedirs(os.path.join(tmp, "weedlogs"))
        with open(os.path.join(tmp, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [
                {"accessKey": "benchkey", "secretKey": "benchsecret"}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        self.procs.append(subprocess.Popen(
            [weed, f"-logdir={tmp}/weedlogs", "mini", f"-dir={tmp}/weed", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false",
             "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-admin.port={wp[0]}", f"-s3.config={tmp}/s3.json", f"-s3.port={wp[1]}",
             f"-master.port={wp[2]}", f"-volume.port={wp[3]}", f"-filer.port={wp[4]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.s3 = f"http://127.0.0.1:{wp[1]}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.s3, timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.2)

    def sql(self, db, query, check=True):
        return subprocess.run([self.psql, "-h", "127.0.0.1", "-p", str(self.pgport), "-U",
                               "wharf", "-d", db, "-Atqc", query],
                              capture_output=True, text=True, check=check)

    def fresh(self, name):
        self.sql("postgres", f"CREATE DATABASE {name}")
        for _ in range(30):
            out = subprocess.run([self.weed, "shell", f"-master=127.0.0.1:{self.wp[2]}"],
                                 input=f"s3.bucket.create -name {name}\n",
                                 capture_output=True, text=True)
            if "created bucket" in out.stdout + out.stderr or "exist" in out.stdout + out.stderr:
                break
            time.sleep(1)

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Wharf:
    def __init__(self, tmp, name, backend, services):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.backend = backend
        self.name = name
        toml = [
            "gc_grace_secs = 5",
            "gc_delete_untagged = true",
            "[log]", "access = false",
            "[[retention]]", f'repositories = "{name}/big"', "keep_last = 10",
        ]
        if backend == "postgres":
            services.fresh(name)
            toml += [
                "[metadata]", 'backend = "postgres"',
                f'url = "postgres://wharf@127.0.0.1:{services.pgport}/{name}"',
                "[storage]", 'backend = "s3"', "[storage.s3]",
                f'endpoint = "{services.s3}"', f'bucket = "{name}"',
                'access_key_id = "benchkey"', 'secret_access_key = "benchsecret"',
            ]
        # [[retention]] must come before the sections that follow it in TOML
        # order only for readability; TOML itself does not mind.
        self.config = os.path.join(self.dir, "wharf.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(toml) + "\n")
        self.proc = None

    def start(self):
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [WHARF, "serve", "--config", self.config, "--addr", self.host,
             "--root", os.path.join(self.dir, "data")],
            env={**os.environ, "WHARF_LOG": "warn"},
            stdout=open(os.path.join(self.dir, "wharf.log"), "a"), stderr=subprocess.STDOUT)
        while True:
            try:
                if http("GET", f"http://{self.host}/readyz", timeout=2)[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                with open(os.path.join(self.dir, "wharf.log")) as f:
                    tail = f.read()[-2000:]
                sys.exit(f"scale.py: wharf exited:\n{tail}")
            time.sleep(0.01)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def url(self, path):
        return f"http://{self.host}{path}"


def page_through(w, path):
    """Follows Link headers from `path`; (items, seconds)."""
    t0, n, url = time.monotonic(), 0, w.url(path)
    key = "tags" if "/tags/" in path else "repositories"
    while url:
        _, headers, body = http("GET", url)
        n += len(json.loads(body).get(key) or [])
        link = headers.get("Link") or headers.get("link")
        url = w.url(link.split(">")[0].lstrip("<")) if link else None
    return n, time.monotonic() - t0


def measure(tmp, backend, size, clients, services):
    name = f"s{backend[0]}{size}"
    w = Wharf(tmp, name, backend, services)
    w.start()
    repos = max(size // 10, 1)
    seedargs = ["--repos", str(repos), "--big-every", "10"]
    r = {"backend": backend, "size": size, "repos": repos, "big_tags": size // 10}
    t0 = time.monotonic()
    seed = load(w.host, "seed", size, clients, name, seedargs)
    r["seed_s"] = round(time.monotonic() - t0, 1)
    r["seed_manifests_s"] = float(seed["ops_s"])

    w.stop()
    r["restart_ready_s"] = round(w.start(), 3)
    time.sleep(3)
    r["rss_rest_mib"] = round(rss_kib(w.proc.pid) / 1024, 1)
    if backend == "redb":
        meta = os.path.getsize(os.path.join(w.dir, "data", "meta.redb"))
    else:
        meta = int(services.sql(name, f"select pg_database_size('{name}')").stdout.strip())
    r["meta_bytes_per_manifest"] = round(meta / size)

    read = seedargs + ["--seeded", str(size)]
    ops = min(20000, max(2000, size // 10))
    r["manifest_get_p99_ms"] = float(load(w.host, "manifest-get-seeded", ops, 8, name, read)["p99_ms"])
    r["blob_head_p99_ms"] = float(load(w.host, "blob-head-seeded", ops, 8, name, read)["p99_ms"])
    r["push_p99_rest_ms"] = float(load(w.host, "push-mono", 1000, 8, name + "rest",
                                       ["--size", "4096"])["p99_ms"])

    n, secs = page_through(w, f"/v2/{name}/big/tags/list?n=1000")
    r["tags_paged"], r["tags_page_us_per_tag"] = n, round(secs * 1e6 / max(n, 1), 2)
    n, secs = page_through(w, "/v2/_catalog?n=1000")
    r["catalog_repos"], r["catalog_us_per_repo"] = n, round(secs * 1e6 / max(n, 1), 2)

    t0 = time.monotonic()
    status, _, body = http("POST", w.url("/_wharf/retention?dry_run=true"))
    secs = time.monotonic() - t0
    planned = json.loads(body)
    r["retention_plan_s"] = round(secs, 3)
    r["retention_plan_us_per_tag"] = round(secs * 1e6 / max(size // 10, 1), 2)
    r["retention_would_delete"] = len(planned.get("tags_would_delete", []))

    deletes = min(500, size // 20)
    for which in ("big", "small"):
        d = load(w.host, f"delete-{which}", deletes, 4, name, read)
        r[f"delete_{which}_p50_ms"] = float(d["p50_ms"])
        r[f"delete_{which}_p99_ms"] = float(d["p99_ms"])

    # GC over everything, with pushes running beside it.
    time.sleep(6)
    done, peak, pushes = threading.Event(), [0], []

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(w.proc.pid))
            time.sleep(0.05)

    def push_meanwhile():
        k = 0
        while not done.is_set():
            res = load(w.host, "push-mono", 200, 8, f"{name}gc{k}", ["--size", "4096"])
            pushes.append(float(res["p99_ms"]))
            k += 1

    threads = [threading.Thread(target=sample), threading.Thread(target=push_meanwhile)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    _, _, body = http("POST", w.url("/_wharf/gc"), timeout=7200)
    r["gc_s"] = round(time.monotonic() - t0, 2)
    done.set()
    for t in threads:
        t.join()
    gc = json.loads(body)
    r["gc_us_per_manifest"] = round(r["gc_s"] * 1e6 / size, 2)
    r["gc_report"] = {k: v for k, v in gc.items() if isinstance(v, (int, float))}
    r["push_p99_during_gc_ms"] = max(pushes) if pushes else None
    r["gc_peak_rss_mib"] = round(peak[0] / 1024, 1)
    time.sleep(5)
    r["rss_after_gc_mib"] = round(rss_kib(w.proc.pid) / 1024, 1)
    w.stop()
    if backend == "redb":
        t0 = time.monotonic()
        subprocess.run([WHARF, "fsck", "--root", os.path.join(w.dir, "data")],
                       capture_output=True)
        r["fsck_s"] = round(time.monotonic() - t0, 2)
        r["fsck_us_per_manifest"] = round(r["fsck_s"] * 1e6 / size, 2)
    shutil.rmtree(os.path.join(w.dir, "data"), ignore_errors=True)
    return r


def start_distribution(tmp):
    """CNCF distribution 2.8.2 (Debian's docker-registry) on a fresh folder."""
    port = free_port()
    d = os.path.join(tmp, "dist")
    os.makedirs(d)
    cfg = os.path.join(d, "dist.yml")
    with open(cfg, "w") as f:
        f.write("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
                f"storage:\n  filesystem: {{rootdirectory: {d}/data}}\n  delete: {{enabled: true}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    proc = subprocess.Popen(["docker-registry", "serve", cfg], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            if http("GET", f"http://127.0.0.1:{port}/v2/", timeout=2)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def clients_sweep(tmp, levels):
    """Pushes of 1 MiB and pulls of 16 MiB at each client count, Wharf
    (redb, data folder) beside distribution, one run."""
    w = Wharf(tmp, "sweep", "redb", None)
    w.start()
    dist, dhost = start_distribution(tmp)
    out = []
    try:
        for n in levels:
            for reg, host, pid in (("wharf", w.host, w.proc.pid), ("distribution", dhost, dist.pid)):
                for scen, size, ops in (("push-mono", 1 << 20, max(2 * n, 256)),
                                        ("pull", 16 << 20, max(n, 128))):
                    cmd = [LOAD, "--host", host, "--scenario", scen, "--ops", str(ops),
                           "--clients", str(n), "--size", str(size), "--run", f"c{n}{reg[0]}",
                           "--pid", str(pid), "--timeout", "900"]
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT")), "")
                    f = {k: v for k, v in (x.split("=", 1) for x in line.split()[1:])}
                    r = {"registry": reg, "clients": n, "scenario": scen,
                         "ops_s": float(f.get("ops_s", 0)), "mb_s": float(f.get("mb_s", 0)),
                         "p50_ms": float(f.get("p50_ms", 0)), "p99_ms": float(f.get("p99_ms", 0)),
                         "ok": int(f.get("ok", 0)), "errors": int(f.get("errors", 0) or 0)
                         if f else ops}
                    print(json.dumps(r), flush=True)
                    out.append(r)
    finally:
        w.stop()
        dist.kill()
        dist.wait()
    return out


def idle_connections(tmp, n):
    """`n` keep-alive connections held idle after one request each: the
    server's RSS, and a small push's p99 beside them."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1024)), hard))
    w = Wharf(tmp, "idle", "redb", None)
    w.start()
    push = ["--size", "4096"]
    r = {"connections": n}
    try:
        load(w.host, "push-mono", 500, 8, "warm", push)
        time.sleep(1)
        r["rss_before_mib"] = round(rss_kib(w.proc.pid) / 1024, 1)
        r["push_p99_before_ms"] = float(load(w.host, "push-mono", 2000, 8, "before", push)["p99_ms"])
        socks = []
        request = b"GET /v2/ HTTP/1.1\r\nHost: idle\r\n\r\n"
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", w.port), timeout=10)
            c.sendall(request)
            got = b""
            while b"\r\n\r\n{}" not in got:
                chunk = c.recv(4096)
                if not chunk:
                    break
                got += chunk
            socks.append(c)
        time.sleep(2)
        r["rss_with_mib"] = round(rss_kib(w.proc.pid) / 1024, 1)
        r["kib_per_connection"] = round((r["rss_with_mib"] - r["rss_before_mib"]) * 1024 / n, 1)
        r["push_p99_with_ms"] = float(load(w.host, "push-mono", 2000, 8, "with", push)["p99_ms"])
        # Still open and still served: a sample asks again.
        alive = 0
        for c in socks[:: max(1, n // 100)]:
            try:
                c.sendall(request)
                if c.recv(4096).startswith(b"HTTP/1.1 200"):
                    alive += 1
            except OSError:
                pass
        r["sample_alive"] = f"{alive}/{len(socks[:: max(1, n // 100)])}"
        for c in socks:
            c.close()
    finally:
        w.stop()
    return r


def sweep_table(rows):
    lines = ["| clients | scenario | Wharf MB/s | distribution MB/s | ratio | Wharf p50 / p99 ms | distribution p50 / p99 ms | errors W / d |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["clients"], r["scenario"]) for r in rows})
    for n, scen in keys:
        w = next(r for r in rows if r["clients"] == n and r["scenario"] == scen and r["registry"] == "wharf")
        d = next(r for r in rows if r["clients"] == n and r["scenario"] == scen and r["registry"] == "distribution")
        ratio = f"{w['mb_s'] / d['mb_s']:.2f}x" if d["mb_s"] else "-"
        lines.append(f"| {n} | {scen} | {w['mb_s']:.0f} | {d['mb_s']:.0f} | {ratio} | "
                     f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} | "
                     f"{w['errors']} / {d['errors']} |")
    return "\n".join(lines)


def sweep_chart(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for i, scen in enumerate(("push-mono", "pull")):
        for reg in ("wharf", "distribution"):
            pts = sorted((r["clients"], r["mb_s"], r["p99_ms"]) for r in rows
                         if r["scenario"] == scen and r["registry"] == reg)
            axes[2 * i].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=reg)
            axes[2 * i + 1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=reg)
        label = "push 1 MiB" if scen == "push-mono" else "pull 16 MiB"
        axes[2 * i].set_title(f"{label}: MB/s", fontsize=9)
        axes[2 * i + 1].set_title(f"{label}: p99 ms", fontsize=9)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients", fontsize=8)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    fig.savefig(os.path.join(out, "scale-clients.svg"))


PER_ITEM = [
    ("seed", lambda r: 1e6 / r["seed_manifests_s"], "µs per manifest pushed (64 clients)"),
    ("restart", lambda r: r["restart_ready_s"] * 1e3, "ms until /readyz (whole)"),
    ("meta", lambda r: r["meta_bytes_per_manifest"], "metadata bytes per manifest"),
    ("tags", lambda r: r["tags_page_us_per_tag"], "µs per tag paged (big repository)"),
    ("catalog", lambda r: r["catalog_us_per_repo"], "µs per repository paged"),
    ("retention", lambda r: r["retention_plan_us_per_tag"], "µs per tag planned"),
    ("gc", lambda r: r["gc_us_per_manifest"], "µs of online GC per manifest"),
    ("delete", lambda r: r["delete_big_p50_ms"], "DELETE p50 ms, big repository"),
]


def table(results):
    cols = ["backend", "size", "seed_manifests_s", "restart_ready_s", "rss_rest_mib",
            "meta_bytes_per_manifest", "manifest_get_p99_ms", "blob_head_p99_ms",
            "push_p99_rest_ms", "tags_page_us_per_tag", "catalog_us_per_repo",
            "retention_plan_us_per_tag", "delete_big_p50_ms", "delete_small_p50_ms",
            "gc_s", "gc_us_per_manifest", "push_p99_during_gc_ms", "gc_peak_rss_mib",
            "rss_after_gc_mib", "fsck_us_per_manifest"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")
    return "\n".join(lines)


def charts(results, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scale.py: no matplotlib (apt install python3-matplotlib): no charts")
        return
    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (key, f, label) in zip(axes.flat, PER_ITEM):
        for backend in ("redb", "postgres"):
            pts = sorted((r["size"], f(r)) for r in results if r["backend"] == backend)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend)
        ax.set_xscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("manifests", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("Cost per item as the registry grows (flat is the goal)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scale-per-item.svg"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (keys, title) in zip(axes, [
        (["push_p99_rest_ms", "push_p99_during_gc_ms"], "push p99 ms: at rest, during GC"),
        (["manifest_get_p99_ms", "blob_head_p99_ms"], "manifest GET, blob HEAD p99 ms"),
        (["rss_rest_mib", "gc_peak_rss_mib", "rss_after_gc_mib"], "RSS MiB: rest, GC peak, after"),
    ]):
        for backend in ("redb", "postgres"):
            for k in keys:
                pts = sorted((r["size"], r.get(k)) for r in results
                             if r["backend"] == backend and r.get(k) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            label=f"{backend} {k.split('_')[0] if len(keys) == 1 else k}")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scale-latency-memory.svg"))
    print(f"charts in {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--backends", default="redb,postgres")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="10^4, redb, 64 clients; no charts")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/performance"))
    ap.add_argument("--results", default=os.path.join(ROOT, "loadtest/last-scale"),
                    help="where the .json and .txt go")
    ap.add_argument("--plot", nargs="+", metavar="JSON",
                    help="only draw the charts and the table from earlier runs' results")
    ap.add_argument("--clients-sweep", metavar="LEVELS",
                    help="instead: push 1 MiB / pull 16 MiB at these client counts "
                         "(1,8,64,512,2048), Wharf beside distribution")
    ap.add_argument("--idle", type=int, metavar="N",
                    help="instead: N idle keep-alive connections: RSS, and a push's p99 beside them")
    a = ap.parse_args()
    if a.smoke:
        a.sizes, a.backends = "10000", "redb"
    if not a.smoke and not a.idle:
        use_debian_matplotlib()
    if a.plot:
        results = []
        for path in a.plot:
            with open(path) as f:
                results += json.load(f)
        save(a.results, results, table)
        charts(results, a.out)
        return
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "wharf", "-p", "wharf-load"],
                   cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="wharf-scale.")
    os.chmod(tmp, 0o755)
    services = None
    try:
        if a.idle:
            print(json.dumps(idle_connections(tmp, a.idle)))
            return
        if a.clients_sweep:
            rows = clients_sweep(tmp, [int(x) for x in a.clients_sweep.split(",")])
            save(a.results + "-clients", rows, sweep_table)
            sweep_chart(rows, a.out)
            return
        services = Services(tmp) if "postgres" in a.backends else None
        results = []
        for backend in a.backends.split(","):
            for size in (int(s) for s in a.sizes.split(",")):
                r = measure(tmp, backend, size, a.clients, services)
                print(json.dumps(r), flush=True)
                results.append(r)
    finally:
        if services:
            services.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if a.smoke:
        print(table(results))
        return
    save(a.results, results, table)
    charts(results, a.out)


def use_debian_matplotlib():
    """Debian's matplotlib is for Debian's python: a pyenv or venv python3
    first on PATH does not see it, so the script runs again under it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.path.exists("/usr/bin/python3") and sys.executable != "/usr/bin/python3":
            os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])


def save(base, rows, render):
    """Prints the table and writes `base`.json and `base`.txt."""
    text = render(rows)
    print(text)
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(base + ".txt", "w") as f:
        f.write(text + "\n")

if __name__ == "__main__":
    main()
