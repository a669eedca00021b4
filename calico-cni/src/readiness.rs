//! Calico's `readiness_gates`: before ADD does anything, every listed URL must answer a GET
//! with a status from 200 to 399 (Felix's `http://localhost:9099/readiness`, typically). Each
//! gate is asked at once and then every [`POLL_INTERVAL`], with that as the timeout of one
//! request, until it is ready or [`GATE_TIMEOUT`] has passed, as in Calico. This is the only
//! place the plugin waits, and only when gates are configured.
//!
//! A gate is a plain `http://` URL: HTTP/1.1 over a TCP connection is all a health endpoint
//! needs, so there is no HTTP client library here. `https://` gates are refused as invalid.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use libipam::cni::{CniError, code};

/// Between two requests to a gate, and the limit of one request (Calico: 5 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long a gate may take to become ready (Calico: 30 s).
pub const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed gate URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gate {
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    target: String,
}

/// Checks every gate URL first (a malformed one fails at once), then waits for each in turn.
pub fn wait_for(gates: &[String]) -> Result<(), CniError> {
    let parsed: Vec<Gate> = gates
        .iter()
        .map(|g| {
            Gate::parse(g).map_err(|why| {
                CniError::invalid_config(format!(
                    "invalid URL set for ReadinessGates:{g} Error:{why}"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    for (url, gate) in gates.iter().zip(&parsed) {
        wait_for_one(url, gate)?;
    }
    Ok(())
}

fn wait_for_one(url: &str, gate: &Gate) -> Result<(), CniError> {
    let deadline = Instant::now() + GATE_TIMEOUT;
    loop {
        let why = match gate.ask() {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        tracing::warn!(
            reason = why.to_string().as_str(),
            "readiness gate {url} not ready yet"
        );
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "readiness gate {url} did not become ready within {}s",
                    GATE_TIMEOUT.as_secs()
                ),
                why,
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

impl Gate {
    fn parse(url: &str) -> Result<Gate, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("not an absolute http:// URL".into());
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "unsupported scheme {scheme:?}: readiness gates are plain http:// URLs"
            ));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or("unterminated [ in the host")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        };
        let target = if target.starts_with('?') || target.is_empty() {
            format!("/{target}")
        } else {
            target.to_string()
        };
        if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces or control characters in the path".into());
        }
        Ok(Gate {
            host: host.to_string(),
            port,
            target,
        })
    }

    /// One GET: `Ok` for a 2xx or 3xx status, otherwise why not.
    fn ask(&self) -> Result<(), String> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        let mut last = format!("{} has no address", self.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, POLL_INTERVAL) {
                Ok(stream) => return self.get(stream),
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last)
    }

    fn get(&self, mut stream: TcpStream) -> Result<(), String> {
        let io = |e: std::io::Error| format!("GET {}: {e}", self.target);
        stream.set_read_timeout(Some(POLL_INTERVAL)).map_err(io)?;
        stream.set_write_timeout(Some(POLL_INTERVAL)).map_err(io)?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        write!(
            stream,
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: calico-cni\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.target
        )
        .map_err(io)?;
        let mut status_line = String::new();
        BufReader::new(stream)
            .read_line(&mut status_line)
            .map_err(io)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .filter(|_| status_line.starts_with("HTTP/"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {:?}", status_line.trim_end()))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            // Calico's wording.
            Err(format!(
                "endpoint is not ready, response code returned:{status}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(host: &str, port: u16, target: &str) -> Gate {
        Gate {
            host: host.into(),
            port,
            target: target.into(),
        }
    }

    #[test]
    fn parses_the_urls_felix_and_operators_use() {
        assert_eq!(
            Gate::parse("http://localhost:9099/readiness"),
            Ok(gate("localhost", 9099, "/readiness"))
        );
        assert_eq!(
            Gate::parse("HTTP://127.0.0.1"),
            Ok(gate("127.0.0.1", 80, "/"))
        );
        assert_eq!(
            Gate::parse("http://[::1]:8080?probe=1#x"),
            Ok(gate("::1", 8080, "/?probe=1"))
        );
        for bad in [
            "localhost:9099/readiness",
            "/readiness",
            "https://localhost:9099/readiness",
            "http://user:pw@localhost/",
            "http://:80/",
            "http://localhost:99999/",
            "http://[::1/",
            "http://localhost/a b",
        ] {
            assert!(Gate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_malformed_gate_fails_at_once_with_calicos_words() {
        let e = wait_for(&["http://localhost:9099/ok".into(), "localhost:9099".into()])
            .expect_err("invalid");
        assert_eq!(e.code, 7);
        assert!(
            e.details
                .starts_with("invalid URL set for ReadinessGates:localhost:9099 Error:"),
            "{e:?}"
        );
    }
}
