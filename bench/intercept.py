#!/usr/bin/env python3
"""Interception mode of the bench rig (`bench/run --intercept`, or this script directly).

Side by side, in one run, for proxies that terminate the client's TLS with a certificate from a
local CA and re-encrypt to the origin (an HTTPS nginx on loopback, certificate from a separate
"origin CA" that every proxy is told to trust for upstream verification):

    egressgate-intercept  egressgate, the origin under `intercept` (one GET rule)
    mitmdump              mitmproxy's mitmdump, no script: passes everything
    squid-bump            Squid ssl_bump (an OpenSSL build: Debian's squid-openssl), peek + bump

Two figures per target, from bench/tlsload.c (verifying client, ALPN http/1.1, no session
resumption):
    handshakes/s   each request is a new CONNECT + full TLS handshake + one GET /1k
    keepalive rps  GET /1k back to back on one TLS connection per client thread

Every proxy gets the same interception CA (the clients trust only it) and the same origin CA.
The proxy is pinned to CPU 0, nginx and tlsload to CPU 1, as in bench/run. Usage:

    bench/intercept.py [--targets egressgate-intercept,mitmdump,squid-bump] [--quick]
                       [--json OUT] [--mitmdump PATH] [--squid-openssl PATH]

mitmdump: `pip install mitmproxy` (a separate venv is fine: --mitmdump /venv/bin/mitmdump).
squid-bump needs a Squid built with OpenSSL. Debian's `squid-openssl` conflicts with `squid`; to
keep plain squid for the other benches, unpack it aside (`apt-get download squid-openssl;
dpkg -x squid-openssl_*.deb /opt/squid-openssl`) and pass
`--squid-openssl /opt/squid-openssl/usr/sbin/squid` (its certificate helper is found beside it).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_run():
    loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


run = _load_run()
ORIGIN_NAME = run.ORIGIN_NAME
TARGETS = ["egressgate-intercept", "mitmdump", "squid-bump"]
THREADS = 16  # client threads (connections in flight)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: str, name: str) -> tuple[str, str]:
    key, cert = os.path.join(d, f"{name}.key"), os.path.join(d, f"{name}.crt")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "3",
        "-subj",
        f"/CN=bench {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    os.chmod(key, 0o600)
    return cert, key


def make_leaf(d: str, ca: tuple[str, str], host: str) -> tuple[str, str]:
    key, csr, cert = (os.path.join(d, f"origin.{x}") for x in ("key", "csr", "crt"))
    ext = os.path.join(d, "origin.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        f"/CN={host}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "3",
        "-extfile",
        ext,
    )
    os.chmod(key, 0o644)  # nginx's worker reads it
    return cert, key


class InterceptBench(run.Bench):
    """bench/run's Bench (temp dir, private /etc/hosts, pinning, process handling) with an
    HTTPS origin and the interception targets."""

    def __init__(self, args: argparse.Namespace) -> None:
        args.idle_tunnels = 0
        args.egressgate_workers = 1
        args.egressgate_python = None
        super().__init__(args)
        self.tls_port = run.free_port()
        self.tlsload = os.path.join(self.tmp, "tlsload")

    def setup(self) -> None:
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-Wall",
                "-o",
                self.tlsload,
                os.path.join(HERE, "tlsload.c"),
                "-lssl",
                "-lcrypto",
                "-lpthread",
            ],
            check=True,
        )
        pki = self.target_dir("pki")
        self.origin_ca = make_ca(pki, "origin-ca")
        self.icpt_ca = make_ca(pki, "intercept-ca")
        self.origin_cert = make_leaf(pki, self.origin_ca, ORIGIN_NAME)
        with open(os.path.join(self.www, "1k"), "wb") as f:
            f.write(b"x" * 1023 + b"\n")
        os.chmod(os.path.join(self.www, "1k"), 0o644)
        with open(self.hosts, "w") as f:
            f.write(f"127.0.0.1 localhost\n127.0.0.1 {ORIGIN_NAME} {run.DENIED_NAME}\n")
        with open(self.resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        for path in (self.hosts, self.resolv):
            os.chmod(path, 0o644)
        r = subprocess.run(
            self.wrap(["getent", "hosts", ORIGIN_NAME], cpu=None), capture_output=True, text=True
        )
        self.netns_ok = r.returncode == 0 and "127.0.0.1" in r.stdout
        self.nofile = 65536
        self.start_nginx()

    def start_nginx(self) -> None:
        conf = os.path.join(self.tmp, "nginx.conf")
        ngx_tmp = os.path.join(self.tmp, "ngx")
        os.makedirs(ngx_tmp, exist_ok=True)
        temps = "\n".join(
            f"  {d}_temp_path {ngx_tmp}/{d};"
            for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  default_type application/octet-stream;
{temps}
  server {{
    listen 127.0.0.1:{self.tls_port} ssl backlog=4096;
    server_name _;
    ssl_certificate {self.origin_cert[0]};
    ssl_certificate_key {self.origin_cert[1]};
    ssl_session_cache shared:SSL:10m;
    root {self.www};
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = self.spawn(
            [
                "taskset",
                "-c",
                run.CLIENT_CPU,
                nginx,
                "-e",
                f"{self.tmp}/nginx-startup.log",
                "-p",
                self.tmp,
                "-c",
                conf,
            ],
            os.path.join(self.tmp, "nginx.out"),
        )
        if not run.wait_port(self.tls_port, self.nginx, 15):
            sys.exit("bench: nginx HTTPS origin did not start; see " + self.tmp)

    # ---- targets
    def make_egressgate_intercept(self, port: int):
        d = self.target_dir("egressgate-intercept")
        access = self.touch(os.path.join(d, "access.log"))
        conf = os.path.join(d, "egressgate.yaml")
        with open(conf, "w") as f:
            f.write(f"""# egressgate interception bench config
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:0
allow: [".bench.test"]
hosts_file: {self.hosts}
allow_private: ["127.0.0.0/8"]
connect_ports: [{self.tls_port}]
access_log: {access}
tls_intercept:
  ca_cert_file: {self.icpt_ca[0]}
  ca_key_file: {self.icpt_ca[1]}
  upstream_ca_file: {self.origin_ca[0]}
intercept:
  - host: {ORIGIN_NAME}
    rules:
      - {{methods: [GET, HEAD], paths: ["/*"]}}
""")
        return (
            [sys.executable, "-m", "egressgate", "run", "--config", conf],
            access,
            None,
            os.getcwd(),
        )

    def make_mitmdump(self, port: int):
        d = self.target_dir("mitmdump")
        # mitmproxy reads its CA (key and certificate in one PEM) from confdir.
        with open(os.path.join(d, "mitmproxy-ca.pem"), "w") as f:
            f.write(_read(self.icpt_ca[1]) + _read(self.icpt_ca[0]))
        access = self.touch(os.path.join(d, "flows.log"))
        cmd = [
            self.args.mitmdump,
            "--mode",
            "regular",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={d}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.origin_ca[0]}",
            "--set",
            "http2=false",
            "--set",
            "flow_detail=1",
        ]
        # flow_detail=1: one line per request on stdout, the nearest thing to an access log.
        return cmd, access, None, None

    def squid_binary(self) -> str | None:
        for path in (self.args.squid_openssl, shutil.which("squid"), "/usr/sbin/squid"):
            if path and os.path.exists(path):
                r = subprocess.run([path, "-v"], capture_output=True, text=True)
                if "--with-openssl" in r.stdout:
                    return path
        return None

    def make_squid_bump(self, port: int):
        squid = self.squid_binary()
        assert squid is not None
        root = os.path.dirname(os.path.dirname(os.path.dirname(squid)))  # …/usr/sbin/squid
        certgen = os.path.join(root, "usr", "lib", "squid", "security_file_certgen")
        user = "proxy" if run._user_exists("proxy") else "nobody"
        d = self.target_dir("squid-bump", user)
        access = self.touch(os.path.join(d, "access.log"), user)
        self.touch(os.path.join(d, "cache.log"), user)
        bump_pem = os.path.join(d, "bump.pem")
        with open(bump_pem, "w") as f:
            f.write(_read(self.icpt_ca[0]) + _read(self.icpt_ca[1]))
        ssl_db = os.path.join(d, "ssl_db")
        subprocess.run([certgen, "-c", "-s", ssl_db, "-M", "16MB"], check=True, capture_output=True)
        subprocess.run(["chown", "-R", user, ssl_db, bump_pem], check=True)
        conf = os.path.join(d, "squid.conf")
        cert_options = "generate-host-certificates=on dynamic_cert_mem_cache_size=16MB"
        with open(conf, "w") as f:
            f.write(f"""# egressgate bench: Squid ssl_bump (peek at the SNI, then bump)
http_port 127.0.0.1:{port} ssl-bump tls-cert={bump_pem} {cert_options}
sslcrtd_program {certgen} -s {ssl_db} -M 16MB
sslcrtd_children 4
tls_outgoing_options cafile={self.origin_ca[0]}
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
visible_hostname egressgate-bench
cache_effective_user {user}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log daemon:{access} squid
cache_store_log none
coredump_dir {d}
cache deny all
hosts_file {self.hosts}
dns_nameservers 127.0.0.1
max_filedescriptors 65536
shutdown_lifetime 1 seconds
pinger_enable off
acl bench_dst dstdomain .bench.test
acl bench_ports port {self.tls_port}
acl CONNECT method CONNECT
http_access deny CONNECT !bench_ports
http_access allow bench_dst
http_access deny all
""")
        chk = subprocess.run([squid, "-k", "parse", "-f", conf], capture_output=True, text=True)
        if chk.returncode != 0:
            raise RuntimeError("squid -k parse failed: " + chk.stderr[-500:])
        return [squid, "-N", "-f", conf], access, None, None

    def spec(self, name: str):
        if name == "egressgate-intercept":
            return self.make_egressgate_intercept
        if name == "mitmdump":
            if not (self.args.mitmdump and os.path.exists(self.args.mitmdump)):
                return "mitmdump not found (pip install mitmproxy; --mitmdump PATH)"
            return self.make_mitmdump
        if name == "squid-bump":
            if self.squid_binary() is None:
                return "no Squid built with OpenSSL (squid-openssl; --squid-openssl PATH)"
            return self.make_squid_bump
        return f"unknown target {name!r}"

    # ---- measurements
    def probe(self, port: int, path: str) -> tuple[int, int, str]:
        """One GET through the proxy's interception: (status, body bytes, certificate issuer)."""
        context = ssl.create_default_context(cafile=self.icpt_ca[0])
        with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
            raw.sendall(
                f"CONNECT {ORIGIN_NAME}:{self.tls_port} HTTP/1.1\r\n"
                f"Host: {ORIGIN_NAME}:{self.tls_port}\r\n\r\n".encode()
            )
            buf = bytearray()
            status, _, _ = run.read_http_head(raw, buf)
            if status != 200:
                return status, 0, ""
            with context.wrap_socket(raw, server_hostname=ORIGIN_NAME) as tls:
                issuer = dict(x[0] for x in tls.getpeercert()["issuer"]).get("commonName", "")
                tls.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: {ORIGIN_NAME}:{self.tls_port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), len(body), issuer

    def tlsload_run(self, mode: str, port: int, duration: float, pid: int) -> dict:
        cmd = [
            self.tlsload,
            mode,
            "-a",
            f"127.0.0.1:{port}",
            "-o",
            f"{ORIGIN_NAME}:{self.tls_port}",
            "-p",
            "/1k",
            "-c",
            str(THREADS),
            "-d",
            str(duration),
            "-C",
            self.icpt_ca[0],
        ]
        cpu = run.CpuSample(pid)
        r = self.run_client(cmd, timeout=duration + 60)
        usage = cpu.done()
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"tlsload {mode} failed: {(r.stdout + r.stderr)[-400:]}") from None
        res.update(usage)
        return res

    def bench_intercept(self, name: str) -> dict:
        res: dict = {"target": name}
        maker = self.spec(name)
        if isinstance(maker, str):
            res["skipped"] = maker
            run.log(f"== {name}: SKIPPED: {maker}")
            return res
        p, port, access = self.start_target(name, maker)
        try:
            status, size, issuer = self.probe(port, "/1k")
            res["probe"] = {"status": status, "bytes": size, "issuer": issuer}
            if status != 200 or size != 1024 or "intercept-ca" not in issuer:
                raise RuntimeError(f"interception probe failed: {res['probe']}")
            self.tlsload_run("handshake", port, 1, p.pid)  # warm-up, discarded
            for mode in ("handshake", "keepalive"):
                run.log(f"   {name}: {mode} ({self.dur}s)")
                m = self.tlsload_run(mode, port, self.dur, p.pid)
                res[mode] = m
                if m["errors"]:
                    self.warn(f"{name}: {mode} had {m['errors']} errors ({m['first_error']})")
            res["log_lines"] = run._count_lines(access)
        finally:
            self.stop(p)
        return res

    def report_intercept(self, order: list[str]) -> str:
        head = [
            "target",
            "handshakes/s",
            "hs p50 ms",
            "hs cpu ms",
            "keepalive rps",
            "ka p50 ms",
            "ka cpu ms",
            "proxy cpu% (hs/ka)",
            "errors",
        ]
        rows = [head]
        for t in order:
            r = self.results.get(t, {})
            if r.get("skipped"):
                rows.append([t, "skipped: " + r["skipped"]])
                continue
            hs, ka = r.get("handshake", {}), r.get("keepalive", {})
            rows.append(
                [
                    t,
                    f"{hs.get('rate', 0):.0f}",
                    f"{hs.get('p50_ms', 0):.1f}",
                    _cpu_ms(hs),
                    f"{ka.get('rate', 0):.0f}",
                    f"{ka.get('p50_ms', 0):.2f}",
                    _cpu_ms(ka),
                    f"{hs.get('proxy_cpu_pct', '-')}/{ka.get('proxy_cpu_pct', '-')}",
                    str(hs.get("errors", 0) + ka.get("errors", 0)),
                ]
            )
        out = [
            "Interception: absolute figures (rates: higher is better; cpu ms = proxy CPU time "
            "per handshake / per request: lower is better)",
            run._fmt_table(rows),
        ]
        base = self.results.get("mitmdump", {})
        if base.get("handshake") and base.get("keepalive"):
            rows = [
                ["target", "handshakes/s", "keepalive rps", "cpu per handshake", "cpu per request"]
            ]
            for t in order:
                r = self.results.get(t, {})
                if r.get("skipped"):
                    continue
                line = [t]
                line.extend(
                    f"{r[m]['rate'] / base[m]['rate']:.2f}x" if base[m]["rate"] else "-"
                    for m in ("handshake", "keepalive")
                )
                for m in ("handshake", "keepalive"):
                    mine, theirs = _cpu_per_op(r[m]), _cpu_per_op(base[m])
                    line.append(f"{theirs / mine:.2f}x" if mine and theirs else "-")
                rows.append(line)
            out += [
                "\nRatio to mitmdump in this run (rates: value / mitmdump's; CPU: mitmdump's "
                "CPU per operation / the target's, so higher is better everywhere)",
                run._fmt_table(rows),
            ]
        if self.warnings:
            out.append("\nWarnings:")
            out.extend("  - " + w for w in self.warnings)
        return "\n".join(out)


def _cpu_per_op(m: dict) -> float | None:
    """Proxy CPU milliseconds per handshake or request (busy machines: the steadier figure)."""
    pct, rate = m.get("proxy_cpu_pct"), m.get("rate")
    return pct * 10.0 / rate if pct and rate else None


def _cpu_ms(m: dict) -> str:
    value = _cpu_per_op(m)
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--mitmdump", default=shutil.which("mitmdump"))
    ap.add_argument("--squid-openssl", default=None, help="a squid binary built with OpenSSL")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bench = InterceptBench(args)
    try:
        bench.setup()
        for t in targets:
            run.log(f"== {t}")
            try:
                bench.results[t] = bench.bench_intercept(t)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                bench.warn(f"{t}: failed: {e}")
                bench.results[t] = {"target": t, "skipped": f"failed: {e}"}
    finally:
        bench.cleanup()
    print(bench.report_intercept(targets))
    if args.json:
        doc = {
            "meta": {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "mode": "intercept",
                "quick": args.quick,
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "targets": targets,
                "threads": THREADS,
                "duration_s": bench.dur,
            },
            "targets": bench.results,
            "warnings": bench.warnings,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
