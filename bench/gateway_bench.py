#!/usr/bin/env python3
"""mcpgw's own benchmark: load generator and runner (standard library, plus wrk when installed).

Against a running gateway:
    bench/gateway_bench.py --url http://127.0.0.1:8080 --user U --password P --pid PID
Or start gateways itself with a generated config ({CONFIG} = its path), A/B alternating per round:
    bench/gateway_bench.py --start 'ours::.venv/bin/mcp-gateway -c {CONFIG}' \
        --start 'ref::/work/shared/reference/run-reference.sh {CONFIG}' --out ab.json
Scenarios: raw, warm, steady, tools, churn, mem (see bench/README.md). JSON on stdout or
--out, a table on stderr. Loopback only; every loop is bounded by a count and a time.
"""

import argparse
import base64
import http.client
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_CMD = [sys.executable, "-S", os.path.join(HERE, "mcp_echo.py")]
TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")
SCENARIOS = ("raw", "warm", "steady", "tools", "churn", "mem")
WRAPPERS = {"sh", "bash", "dash", "env", "timeout", "setsid"}


def log(msg):
    print("[bench {}] {}".format(time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def summarize(lat_ms, elapsed, errors, **extra):
    """Latency percentiles (nearest rank) and throughput of one measurement window."""
    lat = sorted(lat_ms)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p / 100.0))], 3) if lat else None

    out = {
        "n": len(lat),
        "rps": round(len(lat) / elapsed, 1) if elapsed > 0 else None,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": pct(100),
        "errors": {k: v for k, v in errors.items() if v},
    }
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- /proc accounting
def _stat(pid):
    """(ppid, comm, own cpu ticks, reaped children's cpu ticks) or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    f = data[data.rindex(")") + 2 :].split()
    return int(f[1]), comm, int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def proc_tree(pid):
    """pid and all its live descendants."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                kids.setdefault(st[0], []).append(int(name))
    out, todo = [], [pid]
    while todo and len(out) < 100000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_ms(pid):
    """(gateway process CPU ms, whole tree CPU ms incl. reaped children) or (None, None)."""
    if not pid or not _stat(pid):
        return None, None
    own, total = None, 0
    for p in proc_tree(pid):
        st = _stat(p)
        if st:
            own = st[2] if p == pid else own
            total += st[2] + st[3]
    return (own or 0) * TICK_MS, total * TICK_MS


def _mem_kb(pid):
    rss = pss = None
    for fname, key in (("status", "VmRSS:"), ("smaps_rollup", "Pss:")):
        try:
            with open(f"/proc/{pid}/{fname}") as f:
                for line in f:
                    if line.startswith(key):
                        value = int(line.split()[1])
                        rss, pss = (value, pss) if key == "VmRSS:" else (rss, value)
                        break
        except OSError:
            pass
    return rss, pss


def memory(pid):
    """RSS/PSS in MB of the gateway process and of its whole tree, and the tree's size."""
    tree = proc_tree(pid)
    own = _mem_kb(pid)
    mems = [_mem_kb(p) for p in tree]

    def mb(v):
        return round(v / 1024.0, 1) if v is not None else None

    def tsum(i):
        vals = [m[i] for m in mems if m[i] is not None]
        return mb(sum(vals)) if vals else None

    return {
        "rss_mb": mb(own[0]),
        "pss_mb": mb(own[1]),
        "tree_rss_mb": tsum(0),
        "tree_pss_mb": tsum(1),
        "procs": len(tree),
    }


def resolve_gateway(pid):
    """Follow a shell/env wrapper that did not exec down to its only child (bounded)."""
    for _ in range(5):
        st = _stat(pid)
        kids = [p for p in proc_tree(pid) if _stat(p) and _stat(p)[0] == pid]
        if not st or st[1] not in WRAPPERS or len(kids) != 1:
            return pid
        pid = kids[0]
    return pid


# ----------------------------------------------------------------------------- HTTP client
class Client:
    """One persistent keep-alive connection (http.client reconnects when the server closes)."""

    def __init__(self, target, timeout=30.0):
        self.t = target
        self.conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        self.headers = {"Authorization": target.auth, "Accept": "application/json"}

    def request(self, method, path, body=None):
        headers = dict(self.headers)
        if body is not None:
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        for attempt in (0, 1):  # one retry when a kept-alive connection turned out closed
            try:
                self.conn.request(method, path, body, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data, (time.perf_counter() - t0) * 1000.0
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.conn.close()
                if attempt:
                    return 0, type(e).__name__, (time.perf_counter() - t0) * 1000.0
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                return 0, type(e).__name__, (time.perf_counter() - t0) * 1000.0
        raise AssertionError("unreachable")

    def call(self, sid, text="hi"):
        body = {"tool": "echo", "session_id": sid, "arguments": {"text": text}}
        st, data, ms = self.request("POST", f"/services/{self.t.service}/call", body)
        return _check(st, data, lambda d: d.get("result") == text), ms

    def delete(self, sid):
        st, data, ms = self.request("DELETE", f"/sessions/{sid}")
        return _check(st, data, lambda d: "message" in d), ms

    def tools(self):
        st, data, ms = self.request("GET", f"/services/{self.t.service}/tools")
        return _check(st, data, lambda d: any(x.get("name") == "echo" for x in d["tools"])), ms

    def close(self):
        self.conn.close()


def _check(status, data, ok):
    """None when the answer is right, else an error kind."""
    if status == 0:
        return "exc_" + data
    if status != 200:
        return f"status_{status}"
    try:
        return None if ok(json.loads(data)) else "body"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "body"


def py_load(target, op, sids, duration, max_per_client=1000000):
    """One thread and one connection per client (a session id, or None for tools)."""
    results, deadline = [], time.monotonic() + duration

    def worker(sid):
        c, lat, errs = Client(target), [], {}
        for _ in range(max_per_client):
            if time.monotonic() >= deadline:
                break
            err, ms = c.tools() if op == "tools" else c.call(sid)
            if err:
                errs[err] = errs.get(err, 0) + 1
            else:
                lat.append(ms)
        c.close()
        results.append((lat, errs))

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sids]
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(duration + 60)
    elapsed, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
    lat, errs = [], {}
    for lt, er in results:
        lat.extend(lt)
        for k, v in er.items():
            errs[k] = errs.get(k, 0) + v
    client_cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / elapsed * 100
    return summarize(lat, elapsed, errs, tool="py", client_cpu_pct=round(client_cpu, 1))


WRK_LUA = """
local bodies = {%(bodies)s}
local n = 0
function setup(thread) n = n + 1; thread:set("idx", n) end
function init(args)
  req = wrk.format("%(method)s", "%(path)s", {["Authorization"] = "%(auth)s",
    ["Content-Type"] = "application/json", ["Accept"] = "application/json"}, bodies[idx])
end
function request() return req end
function done(s, lat, r)
  local e = s.errors
  io.write(string.format('BENCHJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,' ..
    '"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,' ..
    '"max":%%d}\\n', s.requests, s.duration, e.connect, e.read, e.write, e.status, e.timeout,
    lat:percentile(50), lat:percentile(90), lat:percentile(99), lat.max))
end
"""


def wrk_load(wrk, target, op, sids, duration, tmpdir):
    """One wrk thread and connection per client, so each connection keeps its own session."""
    if op == "tools":
        method, path, bodies = "GET", f"/services/{target.service}/tools", ""
    else:
        method, path = "POST", f"/services/{target.service}/call"
        body = '{"tool":"echo","session_id":"%s","arguments":{"text":"hi"}}'
        bodies = ", ".join("[==[" + body.replace("%s", s) + "]==]" for s in sids)
    script = os.path.join(tmpdir, f"wrk-{uuid.uuid4().hex[:8]}.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA % {"bodies": bodies, "method": method, "path": path, "auth": target.auth})
    secs = max(1, round(duration))
    cmd = [
        wrk,
        f"-t{len(sids)}",
        f"-c{len(sids)}",
        f"-d{secs}s",
        "--timeout",
        "10s",
        "-s",
        script,
        target.url,
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    except subprocess.TimeoutExpired:
        return {"tool": "wrk", "error": "wrk did not finish in time"}
    line = [x for x in p.stdout.splitlines() if x.startswith("BENCHJSON ")]
    if not line:
        return {"tool": "wrk", "error": (p.stderr or p.stdout)[-300:]}
    w = json.loads(line[0][10:])
    ok, elapsed = w["requests"] - w["status"], w["duration_us"] / 1e6
    errs = {k: w[k] for k in ("connect", "read", "write", "status", "timeout")}
    return {
        "tool": "wrk",
        "n": ok,
        "rps": round(ok / elapsed, 1) if elapsed else None,
        **{k: round(w[k] / 1000.0, 3) for k in ("p50", "p90", "p99", "max")},
        "errors": {k: v for k, v in errs.items() if v},
    }


# ----------------------------------------------------------------------------- targets
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    def __init__(self, label, url, user, password, service, pid=None):
        self.label, self.url, self.service, self.pid = label, url, service, pid
        self.proc = self.workdir = self.logfile = None
        u = urlsplit(url)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"only http:// on a loopback address: {url}")
        self.host, self.port = u.hostname, u.port or 80
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @classmethod
    def start(cls, label, command, args):
        workdir = tempfile.mkdtemp(prefix=f"mcpgw-bench-{label}-")
        port, password = free_port(), "bench-" + uuid.uuid4().hex
        limit = "1000000 per second"
        service = {"command": ECHO_CMD, "description": "benchmark echo server"}
        if args.sandbox == "off":  # the reference reads "sandbox", ours reads both
            service["sandbox"] = service["sandbox_config"] = {"enabled": False}
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "auth_user": "bench",
                "auth_password": password,
            },
            "services": {"echo": service},
            "session": {
                "default_timeout": 900,
                "max_sessions_per_service": 1000,
                "max_total_sessions": 2000,
                "cleanup_interval": 60,
                "sandbox_dir": os.path.join(workdir, "sandbox"),
            },
            "rate_limiting": {
                "default_limits": [limit],
                "tools_limit": limit,
                "call_limit": limit,
                "session_delete_limit": limit,
                "storage_uri": "memory://",
            },
            "logging": {"level": "WARNING"},
        }
        os.makedirs(config["session"]["sandbox_dir"])
        path = os.path.join(workdir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
        if "{CONFIG}" not in command:
            command += " -c {CONFIG}"
        argv = shlex.split(command.replace("{CONFIG}", shlex.quote(path)))
        t = cls(label, f"http://127.0.0.1:{port}", "bench", password, "echo")
        t.workdir, t.logfile = workdir, open(os.path.join(workdir, "gateway.log"), "wb")
        log(f"starting {label}: {' '.join(argv)} (port {port}, log {t.logfile.name})")
        t.proc = subprocess.Popen(
            argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=t.logfile, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + args.start_timeout
        while time.monotonic() < deadline:
            if t.proc.poll() is not None:
                t.logfile.flush()
                with open(t.logfile.name, "rb") as f:
                    tail = f.read()[-800:].decode(errors="replace")
                raise RuntimeError(f"{label} exited with {t.proc.returncode}:\n{tail}")
            if t.healthy():
                t.pid = resolve_gateway(t.proc.pid)
                log(f"{label} healthy, gateway pid {t.pid}")
                return t
            time.sleep(0.2)
        t.stop()
        raise RuntimeError(f"{label}: no /health within {args.start_timeout}s")

    def healthy(self):
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=2)
            c.request("GET", "/health")
            ok = c.getresponse().status == 200
            c.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False

    def stop(self):
        """SIGTERM the started process, SIGKILL after 10 s; then any straggler of its tree."""
        if not self.proc or self.proc.poll() is not None:
            return
        tree = proc_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        time.sleep(0.5)
        left = [p for p in tree[1:] if _stat(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        killed = f", killed {len(left)} leftover processes" if left else ""
        log(f"{self.label} stopped (exit {self.proc.returncode}){killed}")
        self.logfile.close()


# ----------------------------------------------------------------------------- the runner
class Bench:
    def __init__(self, args, targets):
        self.args, self.targets = args, targets
        self.wrk = (
            None
            if args.wrk == "off"
            else (
                args.wrk
                if args.wrk != "auto"
                else next(
                    (
                        os.path.join(d, "wrk")
                        for d in os.environ.get("PATH", "").split(":")
                        if os.access(os.path.join(d, "wrk"), os.X_OK)
                    ),
                    None,
                )
            )
        )
        self.tmp = tempfile.mkdtemp(prefix="mcpgw-bench-")
        self.doc = {
            "meta": {
                "argv": sys.argv,
                "nproc": os.cpu_count(),
                "wrk": self.wrk,
                "loadavg_start": os.getloadavg(),
                "started": time.time(),
            },
            "rounds": [],
        }
        self.figs = {t.label: {} for t in targets}  # label -> figure -> [value per round]

    def fig(self, t, rnd, name, value):
        if value is not None:
            self.figs[t.label].setdefault(name, {})[rnd] = value

    def load(self, t, op, sids, duration):
        if self.wrk:
            res = wrk_load(self.wrk, t, op, sids, duration, self.tmp)
            if "error" not in res:
                return res
            log("wrk failed ({}), using the Python client".format(res["error"]))
        return py_load(t, op, sids, duration)

    def measured(self, t, op, sids, duration):
        """A load window with the gateway's CPU per request (process alone and whole tree)."""
        self.quiesce(t)
        g0, t0 = cpu_ms(t.pid)
        res = self.load(t, op, sids, duration)
        g1, t1 = cpu_ms(t.pid)
        if g0 is not None and g1 is not None and res.get("n"):
            res["gw_cpu_ms_per_req"] = round((g1 - g0) / res["n"], 3)
            res["tree_cpu_ms_per_req"] = round((t1 - t0) / res["n"], 3)
        return res

    def quiesce(self, t, limit=5.0):
        """Wait (bounded) until the gateway tree is idle: wrk abandons requests at its deadline."""
        deadline, idle = time.monotonic() + limit, 0
        while t.pid and time.monotonic() < deadline and idle < 2:  # two idle 0.2 s samples
            a = cpu_ms(t.pid)[1]
            time.sleep(0.2)
            b = cpu_ms(t.pid)[1]
            if a is None or b is None:
                return
            idle = idle + 1 if b - a <= 2 * TICK_MS else 0

    def sid(self, t, what):
        return "b-{}-{}-{}".format(
            "".join(c for c in t.label if c.isalnum())[:16], what, uuid.uuid4().hex[:10]
        )

    def open_sessions(self, t, n, what, limit=120.0):
        c, sids, deadline = Client(t), [], time.monotonic() + limit
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            sid = self.sid(t, what)
            err, _ms = c.call(sid)
            if err:
                raise RuntimeError(f"{t.label}: first call of a new session failed: {err}")
            sids.append(sid)
        c.close()
        return sids

    def close_sessions(self, t, sids, limit=120.0):
        todo, deadline, failed = list(sids), time.monotonic() + limit, []

        def worker():
            c = Client(t)
            while todo and time.monotonic() < deadline:
                sid = todo.pop()
                if c.delete(sid)[0]:
                    failed.append(sid)
            c.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(limit + 5)
        if failed or todo:
            log(f"{t.label}: {len(failed) + len(todo)} sessions not deleted")

    # -- scenarios -------------------------------------------------------------------------
    def raw(self, rnd):
        """The floor: the same server over its own pipes, sequential; and spawn to first reply."""

        def rpc(p, mid, method, params=None):
            msg = {"jsonrpc": "2.0", "id": mid, "method": method, "params": params or {}}
            p.stdin.write(json.dumps(msg).encode() + b"\n")
            p.stdin.flush()
            return p.stdout.readline()

        def spawn():
            p = subprocess.Popen(ECHO_CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            rpc(
                p,
                0,
                "initialize",
                {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"},
                },
            )
            p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            return p

        def finish(p):
            p.stdin.close()
            p.wait(10)

        p, lat = spawn(), []
        args = {"name": "echo", "arguments": {"text": "hi"}}
        deadline = time.monotonic() + self.args.duration
        t0 = time.monotonic()
        for i in range(1, 500000):
            if time.monotonic() >= deadline:
                break
            s = time.perf_counter()
            line = rpc(p, i, "tools/call", args)
            lat.append((time.perf_counter() - s) * 1000.0)
            if b'"hi"' not in line:
                raise RuntimeError(f"raw stdio: unexpected answer {line[:200]!r}")
        seq = summarize(lat, time.monotonic() - t0, {})
        finish(p)
        first = []
        for _ in range(self.args.spawn_samples):
            s = time.perf_counter()
            p = spawn()
            rpc(p, 1, "tools/call", args)
            first.append((time.perf_counter() - s) * 1000.0)
            finish(p)
        return {"seq": seq, "spawn_first_call": summarize(first, 1, {})}

    def warm(self, t, rnd, out, sids):
        for c in self.args.conc:
            res = self.measured(t, "call", sids[:c], self.args.duration)
            out[f"warm_c{c}"] = res
            for k in ("p50", "p90", "p99", "rps", "gw_cpu_ms_per_req", "tree_cpu_ms_per_req"):
                self.fig(t, rnd, f"warm_c{c}_{k}", res.get(k))
        raw = self.doc["rounds"][rnd]["raw"]
        if 1 in self.args.conc and raw and out["warm_c1"].get("p50") is not None:
            self.fig(t, rnd, "overhead_ms", round(out["warm_c1"]["p50"] - raw["seq"]["p50"], 3))

    def churn_cycles(self, t, client, deadline, max_cycles, first, dele, errs):
        n = 0
        for n in range(1, max_cycles + 1):
            if time.monotonic() >= deadline:
                return n - 1
            sid = self.sid(t, "churn")
            err, ms = client.call(sid)
            if err:
                errs[err] = errs.get(err, 0) + 1
            first.append(ms)
            err, ms = client.delete(sid)
            if err:
                errs["delete_" + err] = errs.get("delete_" + err, 0) + 1
            dele.append(ms)
        return n

    def steady(self, t, rnd, out, sids):
        alone = self.measured(t, "call", sids[:4], self.args.duration)
        stop, first, dele, errs, count = [False], [], [], {}, [0]

        def churner():
            c = Client(t)
            end = time.monotonic() + self.args.duration + 30
            while not stop[0] and time.monotonic() < end:
                count[0] += self.churn_cycles(
                    t, c, min(end, time.monotonic() + 0.5), 10000, first, dele, errs
                )
            c.close()

        self.quiesce(t)
        th = threading.Thread(target=churner, daemon=True)
        t0 = time.monotonic()
        th.start()
        busy = self.load(t, "call", sids[:4], self.args.duration)
        stop[0] = True
        th.join(60)
        busy["churn_cycles_per_s"] = round(count[0] / (time.monotonic() - t0), 2)
        busy["churn_errors"] = errs
        out["steady_alone"], out["steady_churn"] = alone, busy
        self.fig(t, rnd, "steady_alone_rps", alone.get("rps"))
        self.fig(t, rnd, "steady_churn_rps", busy.get("rps"))
        self.fig(t, rnd, "steady_churn_p99", busy.get("p99"))
        self.fig(t, rnd, "steady_churn_cycles_per_s", busy["churn_cycles_per_s"])
        if alone.get("rps") and busy.get("rps") is not None:
            self.fig(t, rnd, "steady_ratio", round(busy["rps"] / alone["rps"], 3))

    def tools(self, t, rnd, out):
        c = Client(t)
        err, _ms = c.tools()
        c.close()
        if err:
            raise RuntimeError(f"{t.label}: GET tools failed: {err}")
        res = out["tools"] = self.measured(t, "tools", [None] * 4, self.args.duration)
        for k in ("rps", "p50", "gw_cpu_ms_per_req"):
            self.fig(t, rnd, f"tools_{k}", res.get(k))

    def churn(self, t, rnd, out):
        """Sequential cycles: first call of a new session, then DELETE it."""
        self.quiesce(t)
        c, first, dele, errs = Client(t), [], [], {}
        t0 = time.monotonic()
        n = self.churn_cycles(t, c, t0 + self.args.duration, 100000, first, dele, errs)
        if n < self.args.min_cycles:  # slow gateways: a few more cycles, bounded in time
            n += self.churn_cycles(
                t, c, t0 + 4 * self.args.duration + 30, self.args.min_cycles - n, first, dele, errs
            )
        elapsed = time.monotonic() - t0
        c.close()
        res = out["churn"] = {
            "cycles": n,
            "cycles_per_s": round(n / elapsed, 2),
            "first_call": summarize(first, elapsed, {}),
            "delete": summarize(dele, elapsed, {}),
            "errors": errs,
        }
        self.fig(t, rnd, "cycles_per_s", res["cycles_per_s"])
        for k in ("p50", "p90"):
            self.fig(t, rnd, f"first_call_{k}", res["first_call"][k])
            self.fig(t, rnd, f"delete_{k}", res["delete"][k])

    def mem(self, t, rnd, out):
        if not t.pid:
            return
        levels, sids, res = sorted(set(self.args.mem_levels)), [], {}
        self.quiesce(t)
        for level in levels:
            sids += self.open_sessions(t, level - len(sids), "mem")
            time.sleep(1.0)
            self.quiesce(t)
            m = res[str(level)] = dict(memory(t.pid), sessions=len(sids))
            for k in ("rss_mb", "tree_rss_mb", "pss_mb", "tree_pss_mb"):
                self.fig(t, rnd, f"mem_{k}_{level}", m[k])
        out["mem"] = res
        top, low = res[str(levels[-1])], res[str(levels[0])]
        if levels[-1] > levels[0] and top["tree_rss_mb"] is not None:
            self.fig(
                t,
                rnd,
                "mem_tree_rss_mb_per_session",
                round((top["tree_rss_mb"] - low["tree_rss_mb"]) / (levels[-1] - levels[0]), 2),
            )
        self.close_sessions(t, sids)

    # -- driver ----------------------------------------------------------------------------
    def run(self):
        sc = self.args.scenarios
        for rnd in range(self.args.rounds):
            order = self.targets if rnd % 2 == 0 else self.targets[::-1]
            rd = {"order": [t.label for t in order], "raw": None, "targets": {}}
            self.doc["rounds"].append(rd)
            if "raw" in sc:
                rd["raw"] = self.raw(rnd)
                seq, first = rd["raw"]["seq"], rd["raw"]["spawn_first_call"]
                log(
                    f"round {rnd + 1} raw stdio: p50 {seq['p50']:.3f} ms, {seq['rps']:.0f} "
                    f"calls/s; spawn to first reply p50 {first['p50']:.1f} ms"
                )
            for t in order:
                out = rd["targets"][t.label] = {}
                log(f"round {rnd + 1}/{self.args.rounds}: {t.label}")
                need = max(self.args.conc if "warm" in sc else [0], default=0)
                need = max(need, 4 if "steady" in sc else 0)
                sids = self.open_sessions(t, need, "warm") if need else []
                if "warm" in sc:
                    self.warm(t, rnd, out, sids)
                if "steady" in sc:
                    self.steady(t, rnd, out, sids)
                self.close_sessions(t, sids)
                if "tools" in sc:
                    self.tools(t, rnd, out)
                if "churn" in sc:
                    self.churn(t, rnd, out)
                if "mem" in sc and rnd == 0:
                    self.mem(t, rnd, out)
                out["memory_after"] = memory(t.pid) if t.pid else None
        self.doc["meta"]["loadavg_end"] = os.getloadavg()
        shutil.rmtree(self.tmp, ignore_errors=True)  # the wrk scripts
        self.derive()
        return self.doc

    def derive(self):
        """Medians across rounds, and medians of per-round ratios of every target to the first."""
        med = {
            lab: {k: round(statistics.median(v.values()), 3) for k, v in f.items()}
            for lab, f in self.figs.items()
        }
        ratios, base = {}, self.targets[0].label
        for t in self.targets[1:]:
            r = ratios[f"{t.label}/{base}"] = {}
            for k, per in self.figs[t.label].items():
                b = self.figs[base].get(k, {})
                vals = [per[i] / b[i] for i in per if b.get(i)]
                if vals:
                    r[k] = round(statistics.median(vals), 3)
        self.doc["figures"] = {
            lab: {k: dict(sorted(v.items())) for k, v in f.items()} for lab, f in self.figs.items()
        }
        self.doc["medians"], self.doc["ratios"] = med, ratios
        raws = [r["raw"] for r in self.doc["rounds"] if r["raw"]]
        if raws:
            self.doc["medians"]["raw"] = {
                "seq_p50": statistics.median(r["seq"]["p50"] for r in raws),
                "seq_rps": statistics.median(r["seq"]["rps"] for r in raws),
                "spawn_first_call_p50": statistics.median(
                    r["spawn_first_call"]["p50"] for r in raws
                ),
            }

    def table(self):
        labels = [t.label for t in self.targets]
        rcols = list(self.doc["ratios"])
        names = []
        for lab in labels:
            names += [k for k in self.doc["medians"][lab] if k not in names]
        rows = [[f"figure (median of {self.args.rounds} rounds)", *labels, *rcols]]
        for k in names:
            rows.append(
                [k]
                + [str(self.doc["medians"][lab].get(k, "-")) for lab in labels]
                + [str(self.doc["ratios"][r].get(k, "-")) for r in rcols]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        raw = self.doc["medians"].get("raw")
        if raw:
            lines.append(
                "raw stdio floor: p50 {seq_p50:.3f} ms, {seq_rps:.0f} calls/s; spawn "
                "to first reply p50 {spawn_first_call_p50:.1f} ms".format(**raw)
            )
        lines.append(
            "units: *_p50/p90/p99, overhead, first_call, delete: ms; *_rps: req/s; "
            "*cpu_ms_per_req: ms; mem_*: MB (level = live sessions)"
        )
        return "\n".join(lines)


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # so that main's finally stops the gateways it started


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", help="a running gateway, e.g. http://127.0.0.1:8080")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--password", default="")
    ap.add_argument("--service", default="echo", help="service running bench/mcp_echo.py")
    ap.add_argument("--pid", type=int, help="the --url gateway's pid, for CPU and memory")
    ap.add_argument("--label", default="gw", help="label of the --url target")
    ap.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="LABEL::COMMAND",
        help="start a gateway: COMMAND with {CONFIG} (else '-c {CONFIG}' appended)",
    )
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--sandbox", choices=("default", "off"), default="default")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conc", default="1,8,32", help="concurrent sessions of 'warm'")
    ap.add_argument("--mem-levels", default="0,10,50,100")
    ap.add_argument("--min-cycles", type=int, default=10, help="least churn cycles measured")
    ap.add_argument("--spawn-samples", type=int, default=10)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--wrk", default="auto", help="auto, off or a path")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round, 2 s windows, memory at 0/10/25 sessions",
    )
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.duration, a.mem_levels, a.min_cycles, a.spawn_samples = 1, 2.0, "0,10,25", 5, 5
    a.conc = [int(x) for x in a.conc.split(",") if x]
    a.mem_levels = [int(x) for x in a.mem_levels.split(",") if x]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    bad = set(a.scenarios) - set(SCENARIOS)
    if bad or not (a.url or a.start) or a.rounds < 1 or a.duration <= 0:
        ap.error(
            f"need --url or --start, rounds >= 1, duration > 0; unknown scenarios: {sorted(bad)}"
        )
    signal.signal(signal.SIGTERM, _interrupted)
    targets = []
    try:
        for i, spec in enumerate(a.start):
            label, _, cmd = spec.partition("::") if "::" in spec else (f"t{i}", "", spec)
            targets.append(Target.start(label, cmd, a))
        if a.url:
            targets.append(Target(a.label, a.url, a.user, a.password, a.service, a.pid))
        bench = Bench(a, targets)
        doc = bench.run()
    finally:
        for t in targets:
            t.stop()
    text = json.dumps(doc, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
        log(f"JSON written to {a.out}")
    else:
        print(text)
    print(bench.table(), file=sys.stderr)


if __name__ == "__main__":
    main()
