//! The server's CPU time and resident memory, from its Prometheus endpoint
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`) or from `/proc/<pid>` when it runs
//! on this machine. Also this process's own CPU time (the load generator shares the box).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where to read the server's process figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProbe {
    None,
    /// `http://host:port/path` of the Prometheus text endpoint (loopback only).
    Metrics(String),
    /// A local process id.
    Pid(u32),
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
}

impl ServerProbe {
    /// Read the figures now; `None` if unavailable (the error is reported once by the caller).
    pub async fn sample(&self) -> Result<Option<Sample>, String> {
        match self {
            ServerProbe::None => Ok(None),
            ServerProbe::Pid(pid) => proc_sample(&format!("/proc/{pid}")).map(Some),
            ServerProbe::Metrics(url) => {
                let text = http_get(url).await?;
                let cpu = metric(&text, "process_cpu_seconds_total");
                let rss = metric(&text, "process_resident_memory_bytes");
                match (cpu, rss) {
                    (Some(cpu_seconds), Some(rss_bytes)) => Ok(Some(Sample {
                        cpu_seconds,
                        rss_bytes,
                    })),
                    _ => Err(format!(
                        "{url} does not export process_cpu_seconds_total and process_resident_memory_bytes"
                    )),
                }
            }
        }
    }
}

/// CPU seconds (user + system) and RSS of the process at `/proc/<pid>` (or `/proc/self`).
pub fn proc_sample(dir: &str) -> Result<Sample, String> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).map_err(|e| format!("{dir}/stat: {e}"))?;
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or("bad stat field")
    };
    let cpu_seconds = (ticks(11)? + ticks(12)?) / 100.0; // USER_HZ
    let statm = std::fs::read_to_string(format!("{dir}/statm")).map_err(|e| format!("{dir}/statm: {e}"))?;
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or("bad statm")?;
    Ok(Sample {
        cpu_seconds,
        rss_bytes: pages * 4096.0,
    })
}

/// Value of an unlabelled sample `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(char::is_whitespace)?;
        (n == name).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Split `http://host:port/path` into (host:port, path).
pub fn parse_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// metrics URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    Ok((hostport.to_string(), path.to_string()))
}

/// A minimal HTTP/1.0 GET (the metrics endpoint is on loopback; no client library needed).
async fn http_get(url: &str) -> Result<String, String> {
    let (hostport, path) = parse_http_url(url)?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&hostport)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: text/plain\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{url}: malformed response"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("{url}: {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let t = "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total gauge\nprocess_cpu_seconds_total 12.5\nkws_events_total{model=\"m\"} 3\nprocess_resident_memory_bytes 1048576\n";
        assert_eq!(metric(t, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric(t, "process_resident_memory_bytes"), Some(1048576.0));
        assert_eq!(
            metric(t, "kws_events_total"),
            None,
            "labelled samples are not read"
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:9090").expect("url"),
            ("127.0.0.1:9090".into(), "/metrics".into())
        );
    }

    #[test]
    fn own_process() {
        let s = proc_sample("/proc/self").expect("proc");
        assert!(s.rss_bytes > 0.0);
    }
}
