#!/usr/bin/env python3
"""End-to-end check of deploy/prometheus and deploy/grafana against a real Prometheus and kws-service.

On 127.0.0.1 with free ports:
  1. kws-service with the Kubernetes ConfigMap's configuration (deploy/k8s/configmap.yaml; listen
     addresses (gRPC, metrics, health), models dir and a small max_streams overridden by flags);
  2. Prometheus (Debian's `prometheus`) with deploy/prometheus/prometheus.yml and its rule files: the
     only change is Kubernetes discovery -> a static target carrying the same __meta_kubernetes_*
     labels (so the job's relabelling runs as in a cluster), 1 s scrape and evaluation intervals;
  3. a workload through gRPC (stubs generated from proto/ now): labelled streams of the golden
     stream.wav with its keyword labels, known-negative streams (silence and a non-keyword), feedback,
     plus the events the dashboard shows as errors: an invalid config, streams refused at the stream
     limit, a stream sent in one chunk (held back by the per-stream queue limit), a cancelled stream, a unary RPC that fails;
then it asks Prometheus (HTTP API) for every PromQL expression of the recording rules, the Grafana
dashboard (targets and template variables, with the variables substituted) and the prometheus-adapter
rule, and fails on any error or empty result (JUSTIFIED_EMPTY lists the exceptions, with the reason).
Alert expressions must evaluate without error (they are allowed to be empty: nothing should fire).
It also checks the plaintext health listener the probes use, and that the operating thresholds the
service exports (kws_keyword_threshold) are the ones GetModelInfo reports and the generated rules hold.

Every process it starts is stopped on exit, on error and on SIGINT/SIGTERM; the whole run is bounded
by --timeout (SIGALRM).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import wave
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kws.json"
ADAPTER = DEPLOY / "k8s" / "monitoring" / "prometheus-adapter.yaml"
CONFIGMAP = DEPLOY / "k8s" / "configmap.yaml"
GOLDEN = ROOT / "models" / "tc-resnet8" / "golden"

SCRAPE = 1.0  # seconds: scrape and rule evaluation interval of the test Prometheus
MAX_STREAMS = 6  # small, so the test can fill the service and see refusals
# Target labels the static target carries, as Kubernetes pod discovery would set them.
NAMESPACE, POD = "kws-test", "kws-test-0"

# Expressions that cannot return series in this short test, and why. Keys are the expressions (after
# variable substitution) or their source id. Each entry must say why; none are needed today: the
# workload produces every kind of event the dashboard and recording rules show. Alerts are not listed
# here: their expressions only have to evaluate (an empty result = not firing), and promtool unit tests
# (deploy/prometheus/tests) check when they fire.
JUSTIFIED_EMPTY: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Processes started by this test; stopped (SIGTERM, then SIGKILL) by `stop_all`."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        f = open(log, "wb")  # noqa: SIM115 (kept open for the child's lifetime)
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            self.stop(p)


def grid_label(t: float) -> str:
    """The service's `threshold` label of a grid point (deploy/generate.py's `grid_label`)."""
    sys.path.insert(0, str(DEPLOY))
    from generate import grid_label as label

    return label(t)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready at {url} after {timeout} s")


# ---------------------------------------------------------------------------------------------------
# gRPC stubs and workload


def load_stubs(tmp: Path):
    from grpc_tools import protoc  # noqa: PLC0415

    out = tmp / "stubs"
    out.mkdir()
    proto_dir = ROOT / "proto"
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(proto_dir / "kws" / "v1" / "kws.proto")])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed on proto/kws/v1/kws.proto")
    sys.path.insert(0, str(out))
    from kws.v1 import kws_pb2, kws_pb2_grpc  # noqa: PLC0415

    return kws_pb2, kws_pb2_grpc


def read_pcm(name: str) -> bytes:
    with wave.open(str(GOLDEN / name)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000), name
        return w.readframes(w.getnframes())


class Workload:
    """Drives kws-service like clients would; records what it saw for the checks."""

    def __init__(self, pb, pb_grpc, addr: str, metrics_url: str) -> None:
        self.pb = pb
        self.metrics_url = metrics_url
        self.channel = grpc.insecure_channel(addr)
        self.stub = pb_grpc.KeywordSpottingStub(self.channel)
        golden = json.loads((GOLDEN / "golden.json").read_text())
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        self.model_info = info
        keywords = set(info.keywords)
        self.stream_pcm = read_pcm(golden["stream"]["wav"])
        # Labels of the keywords only (the golden stream also marks a non-keyword word, "_unknown_").
        self.labels = [l for l in golden["stream"]["labels"] if l["label"] in keywords]
        self.negative_pcm = read_pcm("05-silence.wav") + read_pcm("04-unknown.wav") + read_pcm("06-silence.wav")
        self.events: list[str] = []
        self.stream_ids: list[str] = []
        self.summaries: list = []
        self.errors: list[str] = []
        self.codes: dict[str, int] = {}
        self.lock = threading.Lock()

    def config(self, **kw):
        c = dict(encoding=self.pb.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=16000, channels=1)
        c.update(kw)
        return self.pb.DetectRequest(config=self.pb.StreamConfig(**c))

    def requests(self, pcm: bytes, labels=(), chunk_ms: int = 100, speed: float = 4.0, hold=None, **cfg):
        yield self.config(**cfg)
        for l in labels:
            yield self.pb.DetectRequest(label=self.pb.Label(keyword=l["label"], start_ms=l["start_ms"],
                                                            end_ms=l["end_ms"]))
        if hold is not None:
            hold.wait(60)
        step = 32 * chunk_ms  # bytes of 16 kHz s16 mono per chunk
        for i in range(0, len(pcm), step):
            yield self.pb.DetectRequest(audio=self.pb.AudioChunk(data=pcm[i:i + step]))
            if speed:
                time.sleep(chunk_ms / 1000 / speed)

    def detect(self, reqs, name: str, expect: grpc.StatusCode | None = None) -> None:
        """Run one Detect stream to its end; count its final status."""
        code = grpc.StatusCode.OK
        try:
            for resp in self.stub.Detect(reqs, timeout=60):
                kind = resp.WhichOneof("response")
                with self.lock:
                    if kind == "ready":
                        self.stream_ids.append(resp.ready.stream_id)
                    elif kind == "event":
                        self.events.append((resp.event.event_id, resp.event.keyword))
                    elif kind == "summary":
                        self.summaries.append((name, resp.summary))
        except grpc.RpcError as e:
            code = e.code()
        with self.lock:
            self.codes[code.name] = self.codes.get(code.name, 0) + 1
            if code != (expect or grpc.StatusCode.OK):
                self.errors.append(f"{name}: ended with {code.name}, expected {(expect or grpc.StatusCode.OK).name}")

    def labelled(self, i: int) -> None:
        self.detect(self.requests(self.stream_pcm, self.labels, client_stream_id=f"labelled-{i}"), f"labelled-{i}")

    def negative(self, i: int) -> None:
        self.detect(self.requests(self.negative_pcm, known_negative=True, client_stream_id=f"negative-{i}"),
                    f"negative-{i}")

    def invalid(self) -> None:
        self.detect(iter([self.config(sample_rate_hz=7000)]), "invalid-config", grpc.StatusCode.INVALID_ARGUMENT)
        # A failing unary RPC (kws_requests_total{code="not_found"}, shown in `Errors by status`).
        try:
            self.stub.GetModelInfo(self.pb.GetModelInfoRequest(model="no-such-model"), timeout=10)
            self.errors.append("GetModelInfo of an unknown model succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                self.errors.append(f"GetModelInfo of an unknown model: {e.code().name}, expected NOT_FOUND")

    def one_chunk(self) -> None:
        """The whole file in one message: received far ahead of scoring, enqueued in parts as the per-stream
        queue limit allows (not `behind`: nothing waits on the client's side)."""
        self.detect(self.requests(self.stream_pcm, self.labels, chunk_ms=10_000, speed=0), "one-chunk")

    def cancelled(self) -> None:
        call = self.stub.Detect(self.requests(self.stream_pcm, speed=1.0), timeout=60)
        try:
            for resp in call:
                if resp.WhichOneof("response") == "ready":
                    time.sleep(0.5)
                    call.cancel()
        except grpc.RpcError as e:
            with self.lock:
                self.codes[e.code().name] = self.codes.get(e.code().name, 0) + 1

    def active_streams(self) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("kws_active_streams "):
                    return float(line.split()[1])
        return float("nan")

    def fill_to_limit(self) -> None:
        """Hold max_streams streams open, try one more (must be refused), then let them finish."""
        # Earlier streams release their slot just after their summary: wait until all are gone.
        deadline = time.monotonic() + 10
        while self.active_streams() != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        release = threading.Event()
        ready = threading.Semaphore(0)
        threads = []

        def hold(i: int) -> None:
            reqs = self.requests(self.negative_pcm, hold=release, known_negative=True, client_stream_id=f"hold-{i}")
            code = grpc.StatusCode.OK
            try:
                for resp in self.stub.Detect(reqs, timeout=60):
                    if resp.WhichOneof("response") == "ready":
                        ready.release()
            except grpc.RpcError as e:
                code = e.code()
            with self.lock:
                self.codes[code.name] = self.codes.get(code.name, 0) + 1
                if code != grpc.StatusCode.OK:
                    self.errors.append(f"hold-{i}: ended with {code.name}")

        for i in range(MAX_STREAMS):
            t = threading.Thread(target=hold, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        for _ in range(MAX_STREAMS):
            if not ready.acquire(timeout=20):
                self.errors.append("held streams did not all start")
                break
        time.sleep(2 * SCRAPE)  # let Prometheus see the pod full
        self.detect(self.requests(self.negative_pcm, known_negative=True), "over-limit",
                    grpc.StatusCode.RESOURCE_EXHAUSTED)
        release.set()
        for t in threads:
            t.join(60)

    def feedback(self) -> None:
        """Reviewers' verdicts: an event of a labelled keyword is right; a false alarm of the golden stream
        is marked as one (if the model makes none, another event is: the service only counts verdicts);
        a missed `go`."""
        pb = self.pb
        labelled = {l["label"] for l in self.labels}
        with self.lock:
            right = [eid for eid, kw in self.events if kw in labelled]
            wrong = [eid for eid, kw in self.events if kw not in labelled]
            streams = list(self.stream_ids)
        others = wrong or right[1:]
        if not right or not others or not streams:
            self.errors.append(f"feedback: not enough events ({len(right)} right, {len(wrong)} wrong) "
                               f"or streams ({len(streams)}) so far")
            return
        self.stub.SubmitFeedback(pb.SubmitFeedbackRequest(
            verdict=pb.EventVerdict(event_id=right[0], verdict=pb.VERDICT_CORRECT)), timeout=10)
        self.stub.SubmitFeedback(pb.SubmitFeedbackRequest(
            verdict=pb.EventVerdict(event_id=others[-1], verdict=pb.VERDICT_FALSE_ALARM, note="e2e")),
            timeout=10)
        self.stub.SubmitFeedback(pb.SubmitFeedbackRequest(
            missed=pb.MissedKeyword(stream_id=streams[-1], keyword="go", start_ms=0, end_ms=1000)), timeout=10)

    def run(self, rounds: int, period: float) -> None:
        specials = {0: self.invalid, 1: self.fill_to_limit, 2: self.one_chunk, 3: self.cancelled}
        for r in range(rounds):
            t0 = time.monotonic()
            threads = [threading.Thread(target=f, args=(2 * r + k,)) for f in (self.labelled,)
                       for k in range(2)] + [threading.Thread(target=self.negative, args=(r,))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            if r in specials:
                specials[r]()
            self.feedback()
            time.sleep(max(0.0, period - (time.monotonic() - t0)))


# ---------------------------------------------------------------------------------------------------
# Prometheus


def prometheus_config(tmp: Path, metrics_port: int) -> Path:
    """deploy/prometheus/prometheus.yml with Kubernetes discovery swapped for an equivalent static target."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE:g}s", scrape_timeout=f"{SCRAPE:g}s",
                         evaluation_interval=f"{SCRAPE:g}s")
    cfg["rule_files"] = [str((PROM_DIR / f).resolve()) for f in cfg["rule_files"]]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "kws")
    if "kubernetes_sd_configs" not in job:
        raise AssertionError("the kws job no longer uses kubernetes_sd_configs: update this test")
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{
        "targets": [f"127.0.0.1:{metrics_port}"],
        "labels": {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": POD,
            "__meta_kubernetes_pod_container_name": "kws",
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": "kws",
            "__meta_kubernetes_pod_container_port_name": "metrics",
            "__meta_kubernetes_pod_phase": "Running",
        },
    }]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class PromAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                return json.loads(body)
            except json.JSONDecodeError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:300]}"}

    def query(self, expr: str) -> tuple[list | None, str | None]:
        d = self.get("/api/v1/query", query=expr)
        if d.get("status") != "success":
            return None, d.get("error", "unknown error")
        return d["data"]["result"], None


# ---------------------------------------------------------------------------------------------------
# Expressions to check


def rule_exprs() -> list[tuple[str, str, bool]]:
    """(source, expr, must_have_series) of every rule file: recording exprs and names, alert exprs."""
    out = []
    for f in sorted((PROM_DIR / "rules").glob("*.yml")):
        for g in yaml.safe_load(f.read_text())["groups"]:
            for i, r in enumerate(g["rules"]):
                src = f"{f.name}:{g['name']}[{i}]"
                if "record" in r:
                    out.append((f"{src} expr", r["expr"].strip(), True))
                    sel = r["record"] + ("{" + ",".join(f'{k}="{v}"' for k, v in r.get("labels", {}).items()) + "}"
                                         if r.get("labels") else "")
                    out.append((f"{src} recorded {r['record']}", sel, True))
                else:
                    out.append((f"{src} alert {r['alert']}", r["expr"].strip(), False))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def dashboard_exprs(variables: dict[str, str], tag: str) -> list[tuple[str, str, bool]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    values = {**GRAFANA_BUILTINS, **variables}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        if not m:
            raise AssertionError(f"variable {v['name']}: only label_values(selector, label) is handled: {q}")
        out.append((f"dashboard[{tag}] variable {v['name']}", substitute(m.group(1), values), True))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"dashboard[{tag}] panel '{p['title']}' {t['refId']}", substitute(t["expr"], values), True))
    return out


def adapter_exprs() -> list[tuple[str, str, bool]]:
    """prometheus-adapter's metricsQuery as the adapter renders it for one pod of the HPA."""
    cm = yaml.safe_load(ADAPTER.read_text())
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    out = []
    for i, r in enumerate(rules):
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", r["seriesQuery"].strip("'\"")).group(0)
        q = (r["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
             .replace("<<.GroupBy>>", "pod"))
        out.append((f"prometheus-adapter rule {i} seriesQuery", r["seriesQuery"].strip("'\""), True))
        out.append((f"prometheus-adapter rule {i} metricsQuery", q, True))
    return out


# ---------------------------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def ok(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.passed += 1
        else:
            self.failed.append(f"{what}: {detail}" if detail else what)
            print(f"FAIL {what}" + (f": {detail}" if detail else ""), flush=True)
        return cond


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--service-bin", default=str(ROOT / "target" / "release" / "kws-service"))
    ap.add_argument("--ort-lib", default=os.environ.get("KWS_ORT_LIB", str(ROOT / ".ort" / os.uname().machine
                                                                           / "libonnxruntime.so")))
    ap.add_argument("--prometheus", default="prometheus")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--period", type=float, default=4.0, help="seconds per workload round")
    ap.add_argument("--timeout", type=int, default=300, help="bound on the whole run, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, TSDB)")
    args = ap.parse_args()

    def on_signal(signum, _frame):
        raise SystemExit(f"interrupted by signal {signum}")

    def on_alarm(_signum, _frame):
        raise TimeoutError(f"e2e test exceeded --timeout {args.timeout} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)

    started = time.monotonic()
    procs = Procs()
    checks = Checks()
    tmp = Path(tempfile.mkdtemp(prefix="kws-deploy-e2e-"))
    service = None
    try:
        pb, pb_grpc = load_stubs(tmp)
        grpc_port, metrics_port, health_port, prom_port = free_port(), free_port(), free_port(), free_port()

        # kws-service, configured by the Kubernetes ConfigMap.
        cm = yaml.safe_load(CONFIGMAP.read_text())
        config = tmp / "config.toml"
        config.write_text(cm["data"]["config.toml"])
        tomllib.loads(config.read_text())
        env = {"KWS_ORT_LIB": args.ort_lib, "RUST_LOG": "info"}
        check = subprocess.run([args.service_bin, "--config", str(config), "--check"], capture_output=True,
                               text=True, env={**os.environ, **env}, timeout=30)
        checks.ok(check.returncode == 0, "configmap config.toml passes `kws-service --check`",
                  check.stderr.strip() or check.stdout.strip())
        service_log = tmp / "kws-service.log"
        service = procs.start("kws-service", [
            args.service_bin, "--config", str(config), "--models-dir", str(ROOT / "models"),
            "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--health-listen", f"127.0.0.1:{health_port}", "--max-streams", str(MAX_STREAMS)], service_log, env)

        # Prometheus with the repo's scrape config and rules.
        prom_cfg = prometheus_config(tmp, metrics_port)
        promtool = subprocess.run(["promtool", "check", "config", str(prom_cfg)], capture_output=True, text=True,
                                  timeout=60)
        checks.ok(promtool.returncode == 0, "promtool check config (repo prometheus.yml, static discovery)",
                  promtool.stdout + promtool.stderr)
        prom = procs.start("prometheus", [
            args.prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
            "--log.level=warn"], tmp / "prometheus.log")
        api = PromAPI(f"http://127.0.0.1:{prom_port}")

        wait_http(f"http://127.0.0.1:{metrics_port}/metrics", service, "kws-service metrics")
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom, "prometheus")
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=60)

        # The probes deploy/k8s and the Dockerfile use: overall ("") and the KeywordSpotting service.
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

        health = health_pb2_grpc.HealthStub(channel)
        for svc in ("", "kws.v1.KeywordSpotting"):
            st = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=10).status
            checks.ok(st == health_pb2.HealthCheckResponse.SERVING, f"grpc health '{svc}' is SERVING",
                      health_pb2.HealthCheckResponse.ServingStatus.Name(st))
        # The plaintext health-only listener (server.health_listen) the Kubernetes probes and the image's
        # HEALTHCHECK use: the same statuses, and nothing but health.
        health_channel = grpc.insecure_channel(f"127.0.0.1:{health_port}")
        grpc.channel_ready_future(health_channel).result(timeout=30)
        for svc in ("", "kws.v1.KeywordSpotting"):
            st = health_pb2_grpc.HealthStub(health_channel).Check(
                health_pb2.HealthCheckRequest(service=svc), timeout=10).status
            checks.ok(st == health_pb2.HealthCheckResponse.SERVING, f"health listener: '{svc}' is SERVING",
                      health_pb2.HealthCheckResponse.ServingStatus.Name(st))
        try:
            pb_grpc.KeywordSpottingStub(health_channel).ListModels(pb.ListModelsRequest(), timeout=10)
            checks.ok(False, "health listener serves only grpc.health.v1", "ListModels answered")
        except grpc.RpcError as e:
            checks.ok(e.code() == grpc.StatusCode.UNIMPLEMENTED, "health listener serves only grpc.health.v1",
                      e.code().name)
        health_channel.close()

        work = Workload(pb, pb_grpc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics")
        # The generated operating points must be the thresholds the service reports (rounded to the grid).
        ops = yaml.safe_load((PROM_DIR / "rules" / "kws-operating-points.yml").read_text())
        points = {(r["labels"]["model"], r["labels"]["keyword"]): r["labels"]["threshold"]
                  for r in ops["groups"][0]["rules"] if r["record"] == "kws:operating_threshold:info"}
        info = work.model_info
        for kw in info.keywords:
            got = points.get((info.name, kw))
            want = grid_label(info.thresholds[kw])
            checks.ok(got == want, f"operating point of {info.name} '{kw}'",
                      f"rules say {got}, GetModelInfo says {want}")

        t0 = time.monotonic()
        work.run(args.rounds, args.period)
        print(f"workload: {time.monotonic() - t0:.1f} s, streams by final status {work.codes}, "
              f"{len(work.events)} events, {len(work.summaries)} summaries", flush=True)
        for e in work.errors:
            checks.ok(False, "workload", e)
        labelled = [s for n, s in work.summaries if n.startswith("labelled")]
        checks.ok(bool(labelled) and all(s.evaluation.labels == len(work.labels) for s in labelled),
                  "labelled streams' summaries carry their labels' evaluation")
        checks.ok(any(s.evaluation.hits > 0 for s in labelled), "labelled streams detect keywords")

        # Let Prometheus scrape the last stream ends and evaluate the rules on them.
        time.sleep(5 * SCRAPE + 1)
        up, err = api.query(f'up{{job="kws",namespace="{NAMESPACE}",pod="{POD}",container="kws"}} == 1')
        checks.ok(bool(up) and not err, "the kws job's relabelling yields job/namespace/pod/container labels",
                  err or "no such target up")

        # Every expression.
        models = sorted({r["metric"]["model"] for r in (api.query("kws_model_loaded == 1")[0] or [])})
        variable_sets = {
            "defaults": {"datasource": "prometheus", "model": ".+", "keyword": ".+", "threshold": "0.50"},
            "specific": {"datasource": "prometheus", "model": "|".join(re.escape(m).replace("\\", "\\\\") for m in models) or "none",
                         "keyword": "yes", "threshold": "0.30"},
        }
        exprs = rule_exprs() + adapter_exprs()
        for tag, variables in variable_sets.items():
            exprs += dashboard_exprs(variables, tag)
        empty_allowed_seen = 0
        for src, expr, must_have in exprs:
            result, err = api.query(expr)
            if err:
                checks.ok(False, f"{src}: query error", f"{err}\n    expr: {expr}")
                continue
            if not must_have:
                checks.ok(True, src)
                continue
            if not result and (expr in JUSTIFIED_EMPTY or src in JUSTIFIED_EMPTY):
                empty_allowed_seen += 1
                continue
            checks.ok(bool(result), f"{src}: no series", f"expr: {expr}")
        print(f"queries: {len(exprs)} expressions checked ({empty_allowed_seen} allowed empty)", flush=True)

        # The operating thresholds the service exports are GetModelInfo's, and the generated rules agree
        # with them (the KwsOperatingPointsStale expression is empty on real data).
        result, err = api.query("kws_keyword_threshold")
        exported = {(r["metric"]["model"], r["metric"]["keyword"]): float(r["value"][1]) for r in result or []}
        for kw in info.keywords:
            got = exported.get((info.name, kw))
            checks.ok(got is not None and abs(got - info.thresholds[kw]) < 1e-6,
                      f"kws_keyword_threshold of {info.name} '{kw}'", f"{got} vs GetModelInfo {info.thresholds[kw]}")
        stale = next(r["expr"] for g in yaml.safe_load((PROM_DIR / "rules" / "kws-alerts.yml").read_text())["groups"]
                     for r in g["rules"] if r.get("alert") == "KwsOperatingPointsStale")
        result, err = api.query(stale)
        checks.ok(result == [] and not err, "KwsOperatingPointsStale expression is empty (generated = exported)",
                  err or str(result))
        # False positives are counted by kind, both kinds present (registered at zero at start-up).
        result, err = api.query("count by (kind) (kws_eval_false_positives_total)")
        kinds = sorted(r["metric"].get("kind", "") for r in result or [])
        checks.ok(kinds == ["labelled", "negative"], "kws_eval_false_positives_total has kind labelled/negative",
                  err or str(kinds))

        # For the log: a few of the numbers the dashboard would show for this run.
        for expr in ('model_keyword_kind:kws_eval_false_alarms_per_hour:operating_ratio_rate1h{kind="negative"}',
                     "model_keyword:kws_eval_false_alarms_per_hour:operating_ratio_rate1h",
                     "model_keyword:kws_eval_recall:operating_ratio_rate1h",
                     "job:kws_cpu_seconds_per_audio_second:ratio_rate5m",
                     'model:kws_event_latency_seconds:histogram_quantile_rate5m{quantile="0.99"}',
                     "model:kws_batch_size:mean_rate5m"):
            result, _ = api.query(expr)
            vals = ", ".join(f"{r['metric'].get('keyword', r['metric'].get('model', r['metric'].get('job')))}="
                             f"{float(r['value'][1]):.3g}" for r in (result or []))
            print(f"info: {expr}: {vals}", flush=True)

        # Prometheus itself evaluated every rule without error (e.g. no many-to-many matching at run time).
        groups = api.get("/api/v1/rules")["data"]["groups"]
        for g in groups:
            for r in g["rules"]:
                checks.ok(r.get("health") == "ok", f"rule {g['name']}/{r['name']} evaluates in Prometheus",
                          r.get("lastError", r.get("health", "")))
        checks.ok(len(groups) >= 4, "Prometheus loaded the repo's rule groups", f"{len(groups)} groups")

        work.channel.close()
        channel.close()

        # Graceful stop: SIGTERM drains (nothing in flight) and exits 0.
        rc = procs.stop(service, timeout=45)
        checks.ok(rc == 0, "kws-service exits 0 after SIGTERM", f"exit status {rc}")
    except BaseException as e:  # report, then clean up below
        checks.ok(False, "e2e run", f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        procs.stop_all()
        if checks.failed:
            for name in ("kws-service.log", "prometheus.log"):
                log = tmp / name
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-25:]
                    print(f"--- last lines of {name} ---\n" + "\n".join(tail))
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"e2e: {checks.passed} checks ok, {len(checks.failed)} failed, {time.monotonic() - started:.0f} s")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
