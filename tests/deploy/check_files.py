#!/usr/bin/python3
"""Offline checks of the deploy files (tests/deploy/run.sh calls one check
per invocation; exit 0 = pass, else the reasons on stdout):

  check_files.py parse        every YAML (multi-document) and JSON file under deploy/
  check_files.py compose      docker-compose.yml: the services, build:, mounts, env
  check_files.py k8s          deploy/k8s: kinds, the image, probes, drain, hardening
  check_files.py dockerfile   our own Dockerfile lint (no hadolint package in Debian 12)
  check_files.py nginx        the TLS front sample: headers in every proxied location,
                              WebSocket upgrade, timeouts vs the 10 s heartbeat
  check_files.py runtime-libs BUILD/chatd   the runtime stage installs every package
                              whose shared library chatd links (ldd + dpkg -S)

Debian's python3-yaml only (run with /usr/bin/python3)."""
import glob
import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
errors = []


def err(msg):
    errors.append(msg)


def load_yaml_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_parse():
    files = sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.y*ml"), recursive=True))
    jsons = sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.json"), recursive=True))
    if len(files) < 8 or not jsons:
        err(f"expected the deploy files, found {len(files)} YAML and {len(jsons)} JSON")
    for p in files:
        try:
            docs = load_yaml_all(p)
            if not docs:
                err(f"{p}: empty")
        except yaml.YAMLError as e:
            err(f"{p}: {e}")
    for p in jsons:
        try:
            with open(p) as f:
                d = json.load(f)
            if "dashboard" in p or "grafana" in p:
                if not d.get("panels"):
                    err(f"{p}: a Grafana dashboard without panels")
        except ValueError as e:
            err(f"{p}: {e}")
    print(f"parsed {len(files)} YAML and {len(jsons)} JSON files")


def check_compose():
    p = os.path.join(ROOT, "deploy", "docker-compose.yml")
    c = load_yaml_all(p)[0]
    svc = c.get("services", {})
    for need in ("chatd-1", "chatd-2", "redis", "postgres", "prometheus", "grafana", "front"):
        if need not in svc:
            err(f"service {need} missing")
    for n in ("chatd-1", "chatd-2"):
        s = svc.get(n, {})
        b = s.get("build") or {}
        ctx = os.path.normpath(os.path.join(ROOT, "deploy", b.get("context", "")))
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
        if not b or not os.path.exists(df):
            err(f"{n}: build: must point at the repository's Dockerfile (got {b})")
        env = s.get("environment", {})
        for k in ("CHAT_REDIS_URL", "CHAT_DATABASE_URL", "CHAT_JWT_SECRET", "CHAT_NODE_ID",
                  "CHAT_LISTEN"):
            if k not in env:
                err(f"{n}: {k} not set")
        if s.get("stop_signal") != "SIGTERM":
            err(f"{n}: stop_signal must be SIGTERM (drain)")
        grace = str(s.get("stop_grace_period", "0s"))
        drain_ms = int(env.get("CHAT_DRAIN_MS", "5000"))
        if not grace.endswith("s") or int(grace[:-1]) * 1000 <= drain_ms:
            err(f"{n}: stop_grace_period {grace} must exceed CHAT_DRAIN_MS {drain_ms}")
        if s.get("ports"):
            err(f"{n}: publishes ports; clients must come through the front")
    if env_ids := {svc.get(n, {}).get("environment", {}).get("CHAT_NODE_ID") for n in ("chatd-1", "chatd-2")}:
        if len(env_ids) != 2:
            err(f"the two nodes need distinct CHAT_NODE_ID, got {env_ids}")
    front = svc.get("front", {})
    fb = front.get("build") or {}
    fdf = os.path.join(ROOT, "deploy", fb.get("context", "."), fb.get("dockerfile", "Dockerfile"))
    if not os.path.exists(fdf):
        err(f"front: build dockerfile {fdf} missing")
    ups = front.get("environment", {}).get("CHATD_UPSTREAMS", "")
    if sorted(u.split(":")[0] for u in ups.split(",")) != ["chatd-1", "chatd-2"]:
        err(f"front: CHATD_UPSTREAMS must list both nodes, got {ups!r}")
    if not any(str(p).endswith(":443") for p in front.get("ports", [])):
        err("front: no TLS port published")
    rd = svc.get("redis", {})
    rcmd = " ".join(rd.get("command", []))
    if "--appendonly yes" not in rcmd or "--appendfsync always" not in rcmd:
        err(f"redis: must run with --appendonly yes --appendfsync always (README Durability), got {rcmd!r}")
    if not any(str(v).split(":")[1:2] == ["/data"] for v in rd.get("volumes", [])):
        err("redis: no volume at /data (its append-only file)")
    vols = " ".join(svc.get("prometheus", {}).get("volumes", []))
    for f in ("prometheus.yml", "alerts.yml"):
        if f not in vols:
            err(f"prometheus: {f} not mounted")
        if not os.path.exists(os.path.join(ROOT, "deploy", f)):
            err(f"deploy/{f} missing")
    gvols = " ".join(svc.get("grafana", {}).get("volumes", []))
    for f in ("grafana/provisioning", "grafana/chatd.json"):
        if f not in gvols:
            err(f"grafana: {f} not mounted")
    prov = load_yaml_all(os.path.join(ROOT, "deploy", "grafana", "provisioning", "dashboards", "chatd.yml"))[0]
    paths = [pr.get("options", {}).get("path") for pr in prov.get("providers", [])]
    if not any(g.split(":")[1].startswith(pa) for pa in paths if pa for g in svc["grafana"]["volumes"]
               if "chatd.json" in g):
        err(f"grafana: the dashboard is not mounted under a provisioned path {paths}")
    prom = load_yaml_all(os.path.join(ROOT, "deploy", "prometheus.yml"))[0]
    targets = [t for sc in prom.get("scrape_configs", []) if sc.get("job_name") == "chatd"
               for st in sc.get("static_configs", []) for t in st.get("targets", [])]
    if sorted(t.split(":")[0] for t in targets) != ["chatd-1", "chatd-2"]:
        err(f"prometheus.yml: job chatd must scrape both nodes, got {targets}")
    print(f"compose: {len(svc)} services")


def check_k8s():
    kinds = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "deploy", "k8s", "*.yaml"))):
        for d in load_yaml_all(p):
            if "apiVersion" not in d or "kind" not in d:
                err(f"{p}: a document without apiVersion/kind")
                continue
            kinds.setdefault(d["kind"], []).append(d)
    deps = [d for d in kinds.get("Deployment", []) if d["metadata"]["name"] == "chatd"]
    if not deps:
        err("no chatd Deployment")
        return
    spec = deps[0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    if not c.get("image") or c["image"].endswith(":latest"):
        err(f"chatd image {c.get('image')!r}: use the built image with a tag, not :latest")
    sc = c.get("securityContext", {})
    for k, v in (("runAsNonRoot", True), ("allowPrivilegeEscalation", False),
                 ("readOnlyRootFilesystem", True)):
        if sc.get(k) != v:
            err(f"securityContext.{k} must be {v}")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        err("readinessProbe must be /readyz")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    drain = int(env.get("CHAT_DRAIN_MS") or 5000)
    if spec.get("terminationGracePeriodSeconds", 30) * 1000 <= drain + 5000:
        err("terminationGracePeriodSeconds must exceed preStop + CHAT_DRAIN_MS")
    if "Service" not in kinds:
        err("no Service")
    rs = [d for d in kinds.get("StatefulSet", []) if d["metadata"]["name"] == "redis"]
    if not rs:
        err("no redis StatefulSet (its append-only file needs a volume)")
    else:
        rspec = rs[0]["spec"]
        rc = rspec["template"]["spec"]["containers"][0]
        args = " ".join(rc.get("args", []))
        if "--appendonly yes" not in args or "--appendfsync always" not in args:
            err(f"redis: must run with --appendonly yes --appendfsync always, got {args!r}")
        mounts = {m["name"]: m["mountPath"] for m in rc.get("volumeMounts", [])}
        claims = {t["metadata"]["name"] for t in rspec.get("volumeClaimTemplates", [])}
        dirarg = args.split("--dir ")[1].split()[0] if "--dir " in args else "/data"
        if not any(n in claims and path == dirarg for n, path in mounts.items()):
            err(f"redis: its --dir {dirarg} is not a claimed volume (mounts {mounts}, claims {claims})")
    print(f"k8s: kinds {sorted(kinds)}")


def dockerfile_stages(text):
    stages, cur = [], None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            cur = {"from": m.group(1), "name": m.group(2), "ins": []}
            stages.append(cur)
        elif cur is None:
            err(f"instruction before FROM: {line}")
        else:
            cur["ins"].append((word, rest.strip()))
    return stages


def dockerignore_patterns():
    p = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(p):
        err(".dockerignore missing")
        return []
    return [ln.strip().rstrip("/") for ln in open(p) if ln.strip() and not ln.startswith("#")]


def ignored(path, pats):
    import fnmatch
    for pat in pats:
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path == pat:
            return True
    return False


def check_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        err(f"multi-stage expected, got {len(stages)} stage(s)")
        return
    for s in stages:
        if not re.match(r"debian:12(-slim)?$|debian:bookworm(-slim)?$", s["from"]):
            err(f"stage {s['name']}: base {s['from']} is not Debian 12")
    build, final = stages[0], stages[-1]
    names = [s["name"] for s in stages]
    final_copy_from = [r for w, r in final["ins"] if w == "COPY" and "--from=" in r]
    if not final_copy_from or not all(f"--from={build['name']}" in r for r in final_copy_from):
        err(f"the final stage must copy from the build stage {build['name']} (stages {names})")

    def apt_pkgs(stage):
        pk = []
        for w, r in stage["ins"]:
            if w == "RUN" and "apt-get install" in r:
                seg = r.split("apt-get install", 1)[1].split("&&")[0]
                pk += [t for t in seg.split() if not t.startswith("-")]
        return pk
    bp, fp = apt_pkgs(build), apt_pkgs(final)
    for need in ("build-essential", "cmake", "pkg-config"):
        if need not in bp:
            err(f"build stage lacks {need}")
    devs = [p for p in fp if p.endswith("-dev") or p in ("build-essential", "cmake", "gcc")]
    if devs:
        err(f"runtime stage installs build packages {devs}")
    deps = open(os.path.join(ROOT, "tools", "deps.sh")).read()
    # the packages chatd is built with (BUILD_PKGS), not those of the tests
    # (a fuzzing runtime, say)
    mb = re.search(r"^BUILD_PKGS=\(([^)]*)\)", deps, re.M)
    if not mb:
        err("tools/deps.sh has no BUILD_PKGS=(...) list")
    for dev in re.findall(r"\b(lib[a-z0-9.+-]+-dev)\b", mb.group(1) if mb else ""):
        if dev not in bp:
            err(f"build stage lacks {dev} (tools/deps.sh builds with it)")
    for w, r in final["ins"]:
        if w == "RUN" and "apt-get install" in r and "--no-install-recommends" not in r:
            err("runtime apt-get install without --no-install-recommends")
        if w == "RUN" and "apt-get update" in r and "rm -rf /var/lib/apt/lists" not in r:
            err("runtime stage keeps the apt lists")
    users = [r for w, r in final["ins"] if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        err(f"final stage must run as a non-root USER, got {users}")
    hc = [r for w, r in final["ins"] if w == "HEALTHCHECK"]
    if not hc or "/readyz" not in hc[-1]:
        err(f"HEALTHCHECK on /readyz missing ({hc})")
    elif "curl" in hc[-1] and "curl" not in fp:
        err("HEALTHCHECK uses curl but the runtime stage does not install it")
    if [r for w, r in final["ins"] if w == "STOPSIGNAL"] != ["SIGTERM"]:
        err("STOPSIGNAL SIGTERM missing")
    if not [r for w, r in final["ins"] if w in ("ENTRYPOINT", "CMD")]:
        err("no ENTRYPOINT/CMD")
    copied = " ".join(final_copy_from)
    for need in ("/etc/chatd/scripts", "/usr/share/chatd/web", "/usr/bin/chatd"):
        if need not in copied:
            err(f"final stage does not copy {need}")
    envs = " ".join(r for w, r in final["ins"] if w == "ENV")
    for k in ("CHAT_SCRIPTS=/etc/chatd/scripts", "CHAT_WEB_DIR=/usr/share/chatd/web", "CHAT_LISTEN=0.0.0.0"):
        if k not in envs:
            err(f"final stage ENV lacks {k}")
    pats = dockerignore_patterns()
    for w, r in build["ins"]:
        if w == "COPY" and "--from" not in r:
            srcs = r.split()[:-1]
            for s in srcs:
                s = s.rstrip("/")
                if not os.path.exists(os.path.join(ROOT, s)):
                    err(f"COPY {s}: not in the repository")
                elif ignored(s, pats):
                    err(f"COPY {s}: excluded by .dockerignore")
    for must in (".git", "build*"):
        if must not in pats:
            err(f".dockerignore should exclude {must}")
    # every file CMake needs at configure time is copied into the build stage
    cm = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    for part in glob.glob(os.path.join(ROOT, "cmake", "parts", "*.cmake")):
        cm += open(part).read()
    copied_dirs = [r.split()[0].rstrip("/") for w, r in build["ins"] if w == "COPY" and "--from" not in r]
    for ref in sorted(set(re.findall(r"\b((?:core|tests/unit|loadtest|deploy/systemd|scripts|web|docs)/[\w./-]+)", cm))):
        if "*" in ref or "${" in ref:
            continue
        if not any(ref == d or ref.startswith(d + "/") for d in copied_dirs):
            err(f"CMake uses {ref}, which the build stage does not copy")
    print(f"Dockerfile: {len(stages)} stages {names}; runtime packages {fp}")


def check_runtime_libs(binary):
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    final = dockerfile_stages(text)[-1]
    fp = set()
    for w, r in final["ins"]:
        if w == "RUN" and "apt-get install" in r:
            fp |= {t for t in r.split("apt-get install", 1)[1].split("&&")[0].split() if not t.startswith("-")}
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libzstd1", "liblzma5", "libcap2",
            "libbz2-1.0", "libselinux1", "libpcre2-8-0", "libtinfo6"}
    pkgs = {}
    linked = set()
    for ln in out.splitlines():
        m = re.search(r"=>\s+(\S+)", ln)
        if not m or not os.path.exists(m.group(1)):
            continue
        linked.add(os.path.realpath(m.group(1)))
        r = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(1))], capture_output=True, text=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", m.group(1)], capture_output=True, text=True)
        if r.returncode == 0:
            pkgs[r.stdout.split(":")[0]] = m.group(1)
    direct = subprocess.run(["objdump", "-p", binary], capture_output=True, text=True).stdout
    needed = set(re.findall(r"NEEDED\s+(\S+)", direct))
    for pkg, lib in sorted(pkgs.items()):
        if os.path.basename(lib) not in needed or pkg in base:
            continue      # a library of a library comes with its package's dependencies
        if pkg not in fp:
            err(f"chatd links {os.path.basename(lib)} from {pkg}, which the runtime stage does not install")
    # what chatd loads at run time without linking it (the policy sandbox's cjson.so, through
    # LuaJIT's C module path; libwebsockets' libuv event library plugin): ldd cannot see
    # them, so start chatd and read its mappings
    for so in loaded_not_linked(binary, linked):
        r = subprocess.run(["dpkg", "-S", so], capture_output=True, text=True)
        pkg = r.stdout.split(":")[0] if r.returncode == 0 else None
        if pkg and pkg not in base and pkg not in fp:
            err(f"chatd loads {so} at start (not linked) from {pkg}, which the runtime stage does not install")
    print(f"runtime libs: {sorted(p for p, l in pkgs.items() if os.path.basename(l) in needed)}")


def loaded_not_linked(binary, linked):
    """The shared objects a started chatd has mapped that ldd does not list."""
    import socket
    import time
    import urllib.request
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--scripts", os.path.join(ROOT, "scripts"),
                             "--web", os.path.join(ROOT, "web"), "--jwt-secret", "runtime-libs-check-secret-0123456789"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                err(f"chatd exited {proc.returncode} at start: {proc.stderr.read().decode()[-300:]}")
                return []
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        with open(f"/proc/{proc.pid}/maps") as f:
            maps = {ln.split()[-1] for ln in f if ".so" in ln.split()[-1]}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    mine = os.path.realpath(binary)
    return sorted(m for m in maps if os.path.realpath(m) not in linked and os.path.realpath(m) != mine
                  and "/ld-linux" not in m)


def nginx_blocks(text):
    """{location: body} of the server block that listens with TLS."""
    text = re.sub(r"#[^\n]*", "", text)
    out = {}
    for m in re.finditer(r"location\s+([^{]+?)\s*\{([^}]*)\}", text):
        out[m.group(1).strip()] = m.group(2)
    return out


def check_nginx():
    text = open(os.path.join(ROOT, "deploy", "nginx", "chatd.conf")).read()
    if not re.search(r"listen\s+\S*443\s+ssl", text):
        err("no TLS listener")
    for d in ("ssl_certificate ", "ssl_certificate_key ", "ssl_protocols"):
        if d not in text:
            err(f"{d.strip()} missing")
    up = re.search(r"upstream\s+chatd\s*\{([^}]*)\}", text)
    if not up or len(re.findall(r"^\s*server\s", up.group(1), re.M)) < 2:
        err("upstream chatd must balance over several nodes")
    locs = nginx_blocks(text)
    if "/ws/" not in locs:
        err("no location /ws/")
    for name, body in locs.items():
        if "proxy_pass" not in body:
            continue
        # nginx: a proxy_set_header in a location drops every inherited one
        for h in ("Host", "X-Forwarded-For", "X-Forwarded-Proto"):
            if not re.search(rf"proxy_set_header\s+{h}\s", body):
                err(f"location {name}: proxy_set_header {h} missing (not inherited when the "
                    f"location sets any header)")
    ws = locs.get("/ws/", "")
    if not re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade", ws) or "Connection" not in ws:
        err("location /ws/: Upgrade/Connection headers missing")
    m = re.search(r"proxy_read_timeout\s+(\d+)s", ws)
    if not m or int(m.group(1)) < 30:
        err("location /ws/: proxy_read_timeout must be >= 30 s (3 x the 10 s heartbeat)")
    if "proxy_buffering off" not in ws:
        err("location /ws/: proxy_buffering off missing")
    if not re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr", ws):
        err("location /ws/: X-Forwarded-For must be the client's address")
    if "$request " in text or "$request_uri" in re.sub(r"return 301[^;]*;", "", text):
        err("the access log must not log the query string (it carries the JWT)")
    for m in re.finditer(r"error_log\s+\S+\s*(\w*);", text):
        if m.group(1) not in ("crit", "alert", "emerg"):
            err(f"error_log level '{m.group(1) or 'error'}': nginx logs the request line with the "
                f"token at error/warn level; use crit")
    print(f"nginx: locations {sorted(locs)}")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    fn = {"parse": check_parse, "compose": check_compose, "k8s": check_k8s,
          "dockerfile": check_dockerfile, "nginx": check_nginx}.get(what)
    if what == "runtime-libs":
        check_runtime_libs(sys.argv[2])
    elif fn:
        fn()
    else:
        print(__doc__)
        return 2
    for e in errors:
        print(f"  - {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
