//! A stand-in for the participant and coordinator binaries, for testing
//! devcluster itself: listens on `WALLET_LISTEN_ADDR` and answers
//! `GET /health` (200) and `GET /env` (its `WALLET_*` environment as JSON).
//! With `FAKE_EXIT_AT_START=CODE` it prints a line and exits with CODE
//! instead, like a service that fails to start.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    if let Ok(code) = std::env::var("FAKE_EXIT_AT_START") {
        eprintln!("fake_service: failing at start as asked (exit {code})");
        std::process::exit(code.parse().unwrap_or(1));
    }
    let addr = std::env::var("WALLET_LISTEN_ADDR").expect("WALLET_LISTEN_ADDR is not set");
    let listener = TcpListener::bind(&addr).expect("cannot listen");
    eprintln!("fake_service: listening on {addr}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request_line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut request_line).is_err() {
            continue;
        }
        // Skip the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/health" => ("200 OK", "{\"status\":\"ok\"}".to_string()),
            "/env" => {
                let env: BTreeMap<String, String> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("WALLET_") || k.starts_with("FAKE_"))
                    .collect();
                ("200 OK", serde_json::to_string(&env).unwrap_or_default())
            }
            _ => ("404 Not Found", "{}".to_string()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
