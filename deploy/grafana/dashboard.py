"""The kws Grafana dashboard, as code. `python3 deploy/generate.py` writes dashboards/kws.json from it.

Every query uses the datasource variable `${datasource}`; template variables `model`, `keyword` and
`threshold` (one of the evaluation grid's labels, default 0.50). Each panel's description says what
question it answers (deploy/README.md lists them too). deploy/tests/e2e_prometheus.py runs every
expression here against a real Prometheus fed by a real kws-service.
"""

from __future__ import annotations

DS = {"type": "prometheus", "uid": "${datasource}"}
UID = "kws-overview"
SEL = 'model=~"$model"'
SELK = 'model=~"$model", keyword=~"$keyword"'
NEG = 'kind="negative"'


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[dict] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.panels.append(
            {"type": "row", "id": self._id(), "title": title, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []}
        )
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt}
    return t


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short",
               overrides: list | None = None, min0: bool = True, maxv: float | None = None) -> dict:
    defaults: dict = {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                                               "spanNulls": True}}
    if min0:
        defaults["min"] = 0
    if maxv is not None:
        defaults["max"] = maxv
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def right_axis(ref: str, unit: str) -> dict:
    return {"matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [{"id": "unit", "value": unit}, {"id": "custom.axisPlacement", "value": "right"}]}


def rename(names: dict[str, str]) -> dict:
    return {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": names}}


def table(title: str, description: str, targets: list[dict], names: dict[str, str], units: dict[str, str]) -> dict:
    overrides = [{"matcher": {"id": "byName", "options": col},
                  "properties": [{"id": "unit", "value": unit}, {"id": "decimals", "value": 3}]}
                 for col, unit in units.items()]
    return {
        "type": "table", "title": title, "description": description, "datasource": DS, "targets": targets,
        "transformations": [{"id": "merge", "options": {}}, rename(names)],
        "fieldConfig": {"defaults": {}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm"},
    }


def barchart(title: str, description: str, targets: list[dict], names: dict[str, str], unit: str,
             x: str = "threshold") -> dict:
    return {
        "type": "barchart", "title": title, "description": description, "datasource": DS, "targets": targets,
        "transformations": [{"id": "merge", "options": {}}, rename(names),
                            {"id": "sortBy", "options": {"sort": [{"field": x}]}}],
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"xField": x, "orientation": "vertical", "showValue": "never", "groupWidth": 0.8,
                    "barWidth": 0.9, "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
    }


def build() -> dict:
    lay = Layout()

    # ---------------------------------------------------------------------------------------------
    lay.row("Detection quality — evaluated traffic (labelled + known-negative streams)")
    lay.add(timeseries(
        "False alarms per hour at the operating threshold (known-negative audio)",
        "Are keywords firing on audio where nobody said them more often than we accept? Detections per "
        "hour of known-negative audio (streams sent with known_negative, where every detection is a "
        "false alarm) at each keyword's operating threshold (the model's threshold, "
        "kws:operating_threshold:info), over the last hour: what the KwsFalseAlarmsAboveBudget alert "
        "uses. The `threshold` in the legend is the operating point. No known-negative traffic, no line.",
        [target(f"model_keyword_kind:kws_eval_false_alarms_per_hour:operating_ratio_rate1h{{{SELK}, {NEG}}}",
                "{{keyword}} @ {{threshold}} ({{model}})")],
        unit="short"), 12, 8)
    lay.add(timeseries(
        "Recall at the operating threshold",
        "Do we catch the keywords people say? Share of labelled keyword occurrences detected at each "
        "keyword's operating threshold, over the last hour of labelled streams.",
        [target(f"model_keyword:kws_eval_recall:operating_ratio_rate1h{{{SELK}}}",
                "{{keyword}} @ {{threshold}} ({{model}})")],
        unit="percentunit", maxv=1), 12, 8)
    lay.add(table(
        "Operating point per keyword (last hour) vs budget",
        "Which keywords are outside their budget right now? Per keyword at its operating threshold: "
        "false alarms per hour of known-negative audio, recall and precision over the last hour, next to "
        "the budgets the alerts use (deploy/prometheus/operating-points.toml), and for comparison the "
        "false alarms per hour of all evaluated (labelled + negative) audio.",
        [target(f"sum without (kind) (model_keyword_kind:kws_eval_false_alarms_per_hour:operating_ratio_rate1h"
                f"{{{SELK}, {NEG}}})", ref="A", instant=True, fmt="table"),
         target(f"kws:false_alarms_per_hour:budget{{{SELK}}}", ref="B", instant=True, fmt="table"),
         target(f"model_keyword:kws_eval_recall:operating_ratio_rate1h{{{SELK}}}", ref="C", instant=True,
                fmt="table"),
         target(f"kws:recall:budget{{{SELK}}}", ref="D", instant=True, fmt="table"),
         target(f"model_keyword:kws_eval_precision:operating_ratio_rate1h{{{SELK}}}", ref="E", instant=True,
                fmt="table"),
         target(f"model_keyword:kws_eval_false_alarms_per_hour:operating_ratio_rate1h{{{SELK}}}", ref="F",
                instant=True, fmt="table")],
        {"Value #A": "FA/h (negative)", "Value #B": "FA/h budget", "Value #C": "recall",
         "Value #D": "recall budget", "Value #E": "precision", "Value #F": "FA/h (all evaluated)"},
        {"FA/h (negative)": "short", "FA/h budget": "short", "recall": "percentunit",
         "recall budget": "percentunit", "precision": "percentunit", "FA/h (all evaluated)": "short"}), 24, 8)

    tp = f"sum by (threshold) (increase(kws_eval_true_positives_total{{{SELK}}}[$__range]))"
    fp = f"sum by (threshold) (increase(kws_eval_false_positives_total{{{SELK}}}[$__range]))"
    fn = f"sum by (threshold) (increase(kws_eval_false_negatives_total{{{SELK}}}[$__range]))"
    fp_neg = f"sum by (threshold) (increase(kws_eval_false_positives_total{{{SELK}, {NEG}}}[$__range]))"
    audio = f"(sum(increase(kws_eval_audio_seconds_total{{{SEL}}}[$__range])) > 0)"
    audio_neg = f"(sum(increase(kws_eval_audio_seconds_total{{{SEL}, {NEG}}}[$__range])) > 0)"
    precision = f"{tp} / (({tp} + {fp}) > 0)"
    recall = f"{tp} / (({tp} + {fn}) > 0)"
    fa_h = f"3600 * {fp} / on () group_left () {audio}"
    fa_h_neg = f"3600 * {fp_neg} / on () group_left () {audio_neg}"
    lay.add(barchart(
        "Precision and recall vs threshold",
        "Where should the threshold be? Precision and recall at every threshold of the evaluation grid, "
        "over the dashboard's time range, for the selected keywords together (pick one keyword for its "
        "own curve). Moving right trades recall for precision.",
        [target(precision, ref="A", instant=True, fmt="table"),
         target(recall, ref="B", instant=True, fmt="table")],
        {"Value #A": "precision", "Value #B": "recall"}, "percentunit"), 12, 9)
    lay.add(barchart(
        "False alarms per hour vs threshold",
        "What false-alarm rate would each threshold give? False alarms per hour of known-negative audio "
        "(and, for comparison, of all evaluated audio) at every grid threshold, over the dashboard's "
        "time range, summed over the selected keywords (= false wake-ups per hour if all of them are "
        "enabled).",
        [target(fa_h_neg, ref="A", instant=True, fmt="table"),
         target(fa_h, ref="B", instant=True, fmt="table")],
        {"Value #A": "negative audio", "Value #B": "all evaluated audio"}, "short"), 12, 9)
    lay.add(table(
        "Threshold table (dashboard time range)",
        "The numbers behind the two curves, with the evidence: false alarms (on known-negative audio and "
        "in total) and labelled occurrences counted at each threshold over the dashboard's time range, "
        "selected keywords together.",
        [target(precision, ref="A", instant=True, fmt="table"),
         target(recall, ref="B", instant=True, fmt="table"),
         target(fa_h_neg, ref="C", instant=True, fmt="table"),
         target(fa_h, ref="D", instant=True, fmt="table"),
         target(fp_neg, ref="E", instant=True, fmt="table"),
         target(fp, ref="F", instant=True, fmt="table"),
         target(f"{tp} + {fn}", ref="G", instant=True, fmt="table")],
        {"Value #A": "precision", "Value #B": "recall", "Value #C": "FA/h (negative)",
         "Value #D": "FA/h (all evaluated)", "Value #E": "false alarms (negative)",
         "Value #F": "false alarms (all)", "Value #G": "labelled occurrences"},
        {"precision": "percentunit", "recall": "percentunit", "FA/h (negative)": "short",
         "FA/h (all evaluated)": "short", "false alarms (negative)": "none", "false alarms (all)": "none",
         "labelled occurrences": "none"}), 24, 9)
    lay.add(timeseries(
        "False alarms per hour and recall at threshold $threshold",
        "How would the keywords do at another threshold, over time? The same last-hour false alarms "
        "per hour of known-negative audio (left axis) and recall (right axis) at the threshold chosen in "
        "the `threshold` variable instead of each keyword's operating threshold.",
        [target(f'model_keyword_threshold_kind:kws_eval_false_alarms_per_hour:ratio_rate1h{{{SELK}, {NEG}, '
                f'threshold="$threshold"}}', "FA/h {{keyword}} ({{model}})", ref="A"),
         target(f'model_keyword_threshold:kws_eval_recall:ratio_rate1h{{{SELK}, threshold="$threshold"}}',
                "recall {{keyword}} ({{model}})", ref="B")],
        unit="short", overrides=[right_axis("B", "percentunit")]), 12, 8)
    lay.add(timeseries(
        "Evaluated audio and feedback",
        "How much evidence are the quality numbers based on? Hours of labelled and known-negative audio "
        "evaluated per hour (left), and reviewers' feedback per hour by verdict (right, SubmitFeedback).",
        [target(f"model_kind:kws_eval_audio_seconds:rate1h{{{SEL}}}", "{{kind}} audio ({{model}})", ref="A"),
         target(f"3600 * model_keyword_verdict:kws_feedback:rate1h{{{SELK}}}",
                "feedback {{verdict}}: {{keyword}}", ref="B")],
        unit="short", overrides=[right_axis("B", "short")]), 12, 8)

    # ---------------------------------------------------------------------------------------------
    lay.row("Latency and throughput")
    lay.add(timeseries(
        "Event latency",
        "How long after the audio arrives does the client get the keyword event? p50/p90/p99 from "
        "receiving the chunk that completed a window to sending its event (queueing, batching, "
        "inference, decoding; not the network).",
        [target(f"model:kws_event_latency_seconds:histogram_quantile_rate5m{{{SEL}}}",
                "p{{quantile}} {{model}}")],
        unit="s"), 12, 8)
    lay.add({
        "type": "heatmap", "title": "Event latency distribution",
        "description": "Is latency bimodal or drifting? Keyword events per latency bucket over time.",
        "datasource": DS,
        "targets": [target(f"sum by (le) (increase(kws_event_latency_seconds_bucket{{{SEL}}}[$__rate_interval]))",
                           "{{le}}", fmt="heatmap")],
        "options": {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                    "color": {"mode": "scheme", "scheme": "Oranges"}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }, 12, 8)
    lay.add(timeseries(
        "Audio throughput",
        "How much audio is the service handling? Seconds of audio received and scored per second — "
        "the number of real-time streams' worth of audio.",
        [target(f"model:kws_audio_received_seconds:rate5m{{{SEL}}}", "received {{model}}", ref="A"),
         target(f"model:kws_audio_processed_seconds:rate5m{{{SEL}}}", "scored {{model}}", ref="B")],
        unit="short"), 8, 8)
    lay.add(timeseries(
        "Windows scored and events",
        "How busy is inference, and what does it find? 1-s windows scored per second (left) and keyword "
        "events sent per second by keyword (right).",
        [target(f"model:kws_windows_scored:rate5m{{{SEL}}}", "windows/s {{model}}", ref="A"),
         target(f"model_keyword:kws_events:rate5m{{{SELK}}}", "events/s {{keyword}}", ref="B")],
        unit="short", overrides=[right_axis("B", "short")]), 8, 8)
    lay.add(timeseries(
        "Batch size",
        "Is cross-stream batching working? Windows per ONNX Runtime call: mean, median and p99. Batches "
        "of 1 under load mean streams do not overlap in time (or max_delay_us is too short).",
        [target(f"model:kws_batch_size:mean_rate5m{{{SEL}}}", "mean {{model}}", ref="A"),
         target(f"model:kws_batch_size:histogram_quantile_rate5m{{{SEL}}}", "p{{quantile}} {{model}}", ref="B")],
        unit="short"), 8, 8)
    lay.add(timeseries(
        "Batcher queue and inference time",
        "Where does scoring time go? p99 wait of a job in the batcher queue and p99 ONNX Runtime time "
        "per batch (left), jobs waiting in the queue (right).",
        [target(f"model:kws_batch_queue_wait_seconds:histogram_quantile_rate5m{{{SEL}}}",
                "queue wait p{{quantile}} {{model}}", ref="A"),
         target(f"model:kws_inference_seconds:histogram_quantile_rate5m{{{SEL}}}",
                "inference p{{quantile}} {{model}}", ref="B"),
         target(f"sum by (model) (kws_batch_queue_depth{{{SEL}}})", "queued jobs {{model}}", ref="C")],
        unit="s", overrides=[right_axis("C", "short")]), 24, 8)

    # ---------------------------------------------------------------------------------------------
    lay.row("Capacity and errors")
    lay.add(timeseries(
        "Active streams vs limit",
        "How full is each pod? Detect streams in progress per pod against its max_streams limit "
        "(dashed); beyond the limit new streams are refused. Streams opened that have not sent their "
        "config yet hold no slot and are shown apart (a flood of them evicts only itself).",
        [target("kws_active_streams", "{{pod}}", ref="A"),
         target("kws_max_streams", "limit {{pod}}", ref="B"),
         target("kws_streams_awaiting_config", "awaiting config {{pod}}", ref="C")],
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                   {"id": "custom.fillOpacity", "value": 0}]}]), 12, 8)
    lay.add(timeseries(
        "Saturation",
        "How close is each pod, and the fleet, to refusing streams? Active streams / max_streams per pod "
        "and for all pods together (the HPA scales on active streams per pod before this reaches 1).",
        [target("instance:kws_streams_saturation:ratio", "{{pod}}", ref="A"),
         target("job:kws_streams_saturation:ratio", "all pods", ref="B")],
        unit="percentunit", maxv=1), 12, 8)
    lay.add(timeseries(
        "CPU seconds per audio second",
        "What does a real-time stream cost? Server CPU-seconds used per second of audio scored, per pod "
        "and overall: the `c` of the sizing formula (deploy/README.md). Meaningful under load.",
        [target("instance:kws_cpu_seconds_per_audio_second:ratio_rate5m", "{{pod}}", ref="A"),
         target("job:kws_cpu_seconds_per_audio_second:ratio_rate5m", "all pods", ref="B")],
        unit="short"), 8, 8)
    lay.add(timeseries(
        "Errors by status",
        "What goes wrong, and whose fault is it? Streams that ended with a non-OK gRPC status (per "
        "second, by status), streams refused before they started by reason (resource_exhausted: "
        "at max_streams; unavailable: draining; unauthenticated), and unary RPCs (GetModelInfo, "
        "ListModels, SubmitFeedback) that failed, by method and status (not_found: unknown model or "
        "expired event id).",
        [target('outcome:kws_streams:rate5m{outcome!="ok"}', "ended: {{outcome}}", ref="A"),
         target("reason:kws_rejected:rate5m", "refused: {{reason}}", ref="B"),
         target('method_code:kws_requests:rate5m{code!="ok"}', "{{method}}: {{code}}", ref="C")],
        unit="reqps"), 8, 8)
    lay.add(timeseries(
        "Streams falling behind",
        "Is any pod short of CPU? Times per second a stream's unscored backlog crossed the behind "
        "threshold (events arrive late; audio is never dropped).",
        [target(f"model:kws_streams_behind:rate5m{{{SEL}}}", "{{model}}")],
        unit="short"), 8, 8)
    lay.add(timeseries(
        "Pod CPU and memory",
        "Do the pods fit their requests? CPU cores used (left), resident memory and the audio features "
        "queued for scoring (right) per kws pod; the queue is bounded by max_queued_bytes, and streams "
        "wait for room beyond it.",
        [target("rate(process_cpu_seconds_total[$__rate_interval]) and on (job, instance) kws_max_streams",
                "cpu {{pod}}", ref="A"),
         target("process_resident_memory_bytes and on (job, instance) kws_max_streams", "rss {{pod}}", ref="B"),
         target("kws_queued_bytes", "queued {{pod}}", ref="C")],
        unit="short", overrides=[right_axis("B", "bytes"), right_axis("C", "bytes")]), 12, 8)
    lay.add({
        "type": "table", "title": "Loaded models",
        "description": "Which model versions does each pod serve? One row per pod and loaded model "
                       "(kws_model_loaded == 1). A pod that is down is missing here: see the next panel.",
        "datasource": DS,
        "targets": [target("kws_model_loaded == 1", ref="A", instant=True, fmt="table")],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "__name__": True, "Value": True}}}],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
    }, 8, 8)
    lay.add({
        "type": "stat", "title": "Pods up / discovered",
        "description": "Are all kws pods running? Scrape targets that answer (up) against all that "
                       "Prometheus discovers; a crash-looping pod (e.g. a model that fails to load) "
                       "counts as discovered but not up.",
        "datasource": DS,
        "targets": [target('sum(up{job="kws"})', "up", ref="A"),
                    target('count(up{job="kws"})', "discovered", ref="B")],
        "fieldConfig": {"defaults": {"unit": "none", "decimals": 0}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "value_and_name",
                    "orientation": "auto", "justifyMode": "auto"},
    }, 4, 8)

    return {
        "uid": UID,
        "title": "kws — keyword spotting",
        "description": "kws-service: detection quality on evaluated traffic, latency, throughput, capacity "
                       "and errors. Panels are described in deploy/README.md.",
        "tags": ["kws"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            variable("model", "Model", "label_values(kws_model_loaded, model)", multi=True),
            variable("keyword", "Keyword", 'label_values(kws_keyword_threshold{model=~"$model"}, keyword)',
                     multi=True),
            variable("threshold", "Threshold", 'label_values(kws_eval_false_positives_total{model=~"$model"}, '
                     "threshold)", multi=False, default="0.50"),
        ]},
        "panels": lay.panels,
    }


def variable(name: str, label: str, query: str, multi: bool, default: str | None = None) -> dict:
    v = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2, "sort": 3 if name == "threshold" else 1, "hide": 0, "regex": "",
        "multi": multi, "includeAll": multi, "options": [],
        "current": {"selected": True, "text": default, "value": default} if default
        else {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    if multi:
        v["allValue"] = ".+"
    return v
