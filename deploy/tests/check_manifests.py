#!/usr/bin/env python3
"""Offline checks of deploy/: Kubernetes schemas, CRD structure, cross-file consistency, dashboard lint.

- Core manifests (deploy/k8s/*.yaml and the adapter ConfigMap) validate strictly against the Kubernetes
  JSON schemas bundled in the `kubernetes-validate` wheel (no network), for the oldest supported
  Kubernetes (1.30: the preStop `sleep` action) and the newest bundled one.
- prometheus-operator objects (PodMonitor, PrometheusRule) and Kustomizations have no bundled schema:
  their structure and references are checked here instead.
- Consistency: selectors, ports, probes on the plaintext health listener, probe service name vs the
  proto, termination grace vs drain grace, connection age, the sizing formula (deploy/README.md) vs
  resources/max_streams/HPA target, Dockerfile vs ConfigMap.
- Dashboard lint: ids, grid, datasource variable everywhere, variables defined, descriptions; every
  panel and every alert is described in deploy/README.md.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ["1.30.0", "1.37.0"]

failures: list[str] = []
passed = 0


def check(cond: bool, what: str) -> None:
    global passed
    if cond:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL {what}")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def quantity(q: str) -> float:
    """Kubernetes quantity -> float (cores or bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1)


def schemas() -> None:
    core = sorted(K8S.glob("*.yaml"))
    core = [p for p in core if p.name != "kustomization.yaml"] + [K8S / "monitoring" / "prometheus-adapter.yaml"]
    for v in K8S_VERSIONS:
        r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", v, *map(str, core)],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"kubernetes-validate --strict -k {v}: {r.stdout.strip()} {r.stderr.strip()}")
    # The validator must be able to fail (guards against a validator that silently accepts anything).
    bad = yaml.safe_load((K8S / "deployment.yaml").read_text())
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-"], input=yaml.safe_dump(bad),
                       capture_output=True, text=True)
    check(r.returncode != 0, "kubernetes-validate rejects an unknown field (negative control)")


def main() -> int:
    schemas()

    cm = docs(K8S / "configmap.yaml")[0]
    cfg = tomllib.loads(cm["data"]["config.toml"])
    dep = docs(K8S / "deployment.yaml")[0]
    services = docs(K8S / "service.yaml")
    pdb = docs(K8S / "pdb.yaml")[0]
    hpa = docs(K8S / "hpa.yaml")[0]
    podmon = docs(K8S / "monitoring" / "podmonitor.yaml")[0]
    prule = docs(K8S / "monitoring" / "prometheusrule.yaml")[0]
    adapter = yaml.safe_load(docs(K8S / "monitoring" / "prometheus-adapter.yaml")[0]["data"]["config.yaml"])

    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    def selects(sel: dict) -> bool:
        return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())

    # Selectors.
    check(dep["spec"]["selector"]["matchLabels"] == {k: pod_labels[k] for k in dep["spec"]["selector"]["matchLabels"]},
          "Deployment selector matches its pod template labels")
    for s in services:
        check(selects(s["spec"]["selector"]), f"Service {s['metadata']['name']} selects the kws pods")
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in ports, f"Service {s['metadata']['name']} targetPort {p['targetPort']} is a container port")
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "PodDisruptionBudget selects the kws pods")
    check(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": dep["metadata"]["name"]}, "HPA targets the Deployment")
    check("replicas" not in dep["spec"], "Deployment leaves replicas to the HPA")

    # Ports and probes vs the service configuration and the proto.
    listen_port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    metrics_port = int(cfg["server"]["metrics_listen"].rsplit(":", 1)[1])
    health_listen = cfg["server"].get("health_listen")
    check(health_listen is not None, "configmap sets server.health_listen (plaintext probes, TLS-proof)")
    health_port = int(health_listen.rsplit(":", 1)[1]) if health_listen else listen_port
    check(ports.get("grpc") == listen_port, "container port grpc = configmap server.listen port")
    check(ports.get("metrics") == metrics_port, "container port metrics = configmap server.metrics_listen port")
    check(ports.get("health") == health_port, "container port health = configmap server.health_listen port")
    check(len({listen_port, metrics_port, health_port}) == 3, "gRPC, metrics and health ports differ")
    proto = (ROOT / "proto" / "kws" / "v1" / "kws.proto").read_text()
    service_name = (re.search(r"^package\s+([\w.]+);", proto, re.M).group(1) + "."
                    + re.search(r"^service\s+(\w+)", proto, re.M).group(1))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(c[probe]["grpc"]["port"] == health_port, f"{probe} uses gRPC health on the health port")
    check(c["readinessProbe"]["grpc"].get("service") == service_name,
          f"readinessProbe checks {service_name} (NOT_SERVING while draining)")

    # Shutdown: the pod must outlive preStop + drain grace + the closing phase (service/src/shutdown.rs).
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = cfg["server"].get("drain_grace_ms", 30_000) / 1000
    closing = 10
    check(pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + closing + 5,
          f"terminationGracePeriodSeconds >= preStop {pre_stop} + drain {drain:g} + closing {closing} + 5 s")
    # Connections are recycled, so clients balancing through kws-headless find pods added later
    # (service default 30 min; 0 = never).
    age_ms = cfg["server"].get("max_connection_age_ms", 30 * 60 * 1000)
    check(0 < age_ms <= 30 * 60 * 1000, f"server.max_connection_age_ms {age_ms} recycles connections (<= 30 min)")

    # Sizing formula (deploy/README.md "Sizing").
    a = dep["metadata"]["annotations"]
    cps = float(a["kws/sizing-cpu-per-stream"])
    idle = float(a["kws/sizing-idle-cpu"])
    u = float(a["kws/sizing-utilisation"])
    h = float(a["kws/sizing-hpa-headroom"])
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    cores = quantity(req["cpu"])
    max_streams = cfg["server"]["max_streams"]
    want = math.floor(u * (cores - idle) / cps)
    check(max_streams == want, f"configmap max_streams {max_streams} = floor(u*(P-b)/c) = {want}")
    target = int(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    check(target == math.floor(h * max_streams), f"HPA target {target} = floor(h*max_streams) = {math.floor(h * max_streams)}")
    check(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == adapter["rules"][0]["name"]["as"],
          "HPA metric is the one prometheus-adapter exposes")
    per_stream = quantity(a["kws/sizing-memory-per-stream"]) + quantity(a["kws/sizing-stream-buffers"])
    queued = cfg["server"].get("max_queued_bytes", 128 << 20)
    mem = (quantity(a["kws/sizing-idle-memory"]) + max_streams * per_stream + queued
           + quantity(a["kws/sizing-event-store-memory"]))
    check(quantity(req["memory"]) >= mem,
          f"memory request >= idle + max_streams*(m + buffers) + max_queued_bytes + event store = {mem / 2**20:.0f} Mi")
    check(req == lim, "requests = limits (Guaranteed QoS)")
    check(cfg["batcher"]["workers"] == int(cores), "one inference worker per requested core")

    # prometheus-operator objects (no bundled schema).
    check(podmon["apiVersion"] == "monitoring.coreos.com/v1" and podmon["kind"] == "PodMonitor", "PodMonitor kind")
    check(selects(podmon["spec"]["selector"]["matchLabels"]), "PodMonitor selects the kws pods")
    check(pod_labels.get(podmon["spec"]["jobLabel"]) == "kws", "PodMonitor jobLabel gives job=\"kws\" (alerts use it)")
    check(all(e["port"] in ports for e in podmon["spec"]["podMetricsEndpoints"]), "PodMonitor port is a container port")
    check(prule["apiVersion"] == "monitoring.coreos.com/v1" and prule["kind"] == "PrometheusRule"
          and all(("record" in r or "alert" in r) and "expr" in r for g in prule["spec"]["groups"] for r in g["rules"]),
          "PrometheusRule structure")
    r0 = adapter["rules"][0]
    check(all(k in r0 for k in ("seriesQuery", "resources", "name", "metricsQuery"))
          and r0["resources"]["overrides"]["pod"]["resource"] == "pod", "prometheus-adapter rule structure")
    for kfile in (K8S / "kustomization.yaml", K8S / "monitoring" / "kustomization.yaml"):
        k = docs(kfile)[0]
        check(all((kfile.parent / r).exists() for r in k["resources"]), f"{kfile.relative_to(ROOT)} resources exist")

    # Dockerfile vs configuration.
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    expose = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    check(expose == {listen_port, metrics_port, health_port}, "Dockerfile EXPOSE = configmap ports")
    check(f"-service={service_name}" in dockerfile and f"-addr=127.0.0.1:{health_port}" in dockerfile,
          "Dockerfile HEALTHCHECK probes the KeywordSpotting service on the health port")
    # The image's KWS_* variables override the config file: they must say what the ConfigMap says.
    check(f"KWS_HEALTH_LISTEN={health_listen}" in dockerfile, "image KWS_HEALTH_LISTEN = configmap server.health_listen")
    check(f"KWS_LOG_FORMAT={cfg['log']['format']}" in dockerfile, "image KWS_LOG_FORMAT = configmap log.format")
    for m in re.finditer(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for src in m.group(1).split()[:-1]:
            check(src == "." or (ROOT / src).exists(), f"Dockerfile COPY source {src} exists")
    check(f"KWS_MODELS_DIR={cfg['models']['dir']}" in dockerfile, "image models dir = configmap models.dir")
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    check(bool(user) and int(user.group(1)) == pod["spec"]["securityContext"]["runAsUser"] != 0,
          "image USER = pod runAsUser, non-root")
    for spec in cfg["models"]["serve"]:
        name = spec.split(":")[0]
        check((ROOT / "models" / name / "manifest.json").exists(), f"served model {name} ships in models/")

    # Dashboard lint.
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "kws.json").read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    check(len(ids) == len(set(ids)), "dashboard panel ids unique")
    cells = set()
    overlap = False
    for p in panels:
        g = p["gridPos"]
        check(g["x"] + g["w"] <= 24, f"panel '{p['title']}' fits the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                overlap |= (x, y) in cells
                cells.add((x, y))
    check(not overlap, "dashboard panels do not overlap")
    names = {v["name"] for v in dash["templating"]["list"]}
    check({"datasource", "model", "keyword", "threshold"} <= names, "dashboard variables datasource/model/keyword/threshold")
    readme = (DEPLOY / "README.md").read_text()
    builtin = {"__rate_interval", "__interval", "__range"}
    for p in panels:
        if p["type"] == "row":
            continue
        check(p.get("datasource", {}).get("uid") == "${datasource}", f"panel '{p['title']}' uses ${{datasource}}")
        check(bool(p.get("description")), f"panel '{p['title']}' has a description")
        check(f"**{p['title'].replace('$threshold', '`$threshold`')}**" in readme
              or f"**{p['title']}**" in readme, f"deploy/README.md describes panel '{p['title']}'")
        for t in p["targets"]:
            check(t["datasource"]["uid"] == "${datasource}", f"panel '{p['title']}' {t['refId']} uses ${{datasource}}")
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            check(used <= names | builtin, f"panel '{p['title']}' {t['refId']} variables {used - names - builtin} defined")

    # Every alert has its section in deploy/README.md (the runbook annotation points there).
    for f in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    anchor = r["annotations"]["runbook"].split("#")[1]
                    check(re.search(rf"^#+ .*{r['alert']}", readme, re.M) is not None and anchor == r["alert"].lower(),
                          f"deploy/README.md has a section for alert {r['alert']}")

    print(f"manifests: {passed} checks ok, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
