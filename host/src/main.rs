//! `portcullis-host -c envoy.yaml [--concurrency N] [--log-level info]`: runs Envoy v3 bootstrap
//! YAML with our wasm filters on wasmtime (see [`portcullis_host::proxy`]).

use portcullis_host::abi::LogLevel;
use portcullis_host::proxy::{Options, run};
use std::path::PathBuf;

const USAGE: &str = "usage: portcullis-host -c <envoy.yaml> [--concurrency N] [--log-level trace|debug|info|warning|error|critical]";

fn level(name: &str) -> Option<LogLevel> {
    Some(match name {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" | "off" => LogLevel::Critical,
        _ => return None,
    })
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut config = None;
    let mut concurrency = 2;
    let mut log_level = LogLevel::Info;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "-c" | "--config-path" => config = Some(PathBuf::from(value()?)),
            "--concurrency" => {
                concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}\n{USAGE}"))?;
            }
            "-l" | "--log-level" => {
                let v = value()?;
                log_level = level(&v).ok_or_else(|| format!("unknown log level {v:?}\n{USAGE}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let config = config.ok_or_else(|| format!("-c is required\n{USAGE}"))?;
    Ok(Options {
        config,
        concurrency,
        log_level,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match parse(&args) {
        Ok(opts) => run(&opts),
        Err(msg) => {
            eprintln!("{msg}");
            2
        }
    };
    std::process::exit(code);
}
