//! `portcullis-echo --listen ADDR [--name NAME] [--tls-cert F --tls-key F] [--file PATH=FILE]…
//! [--test-hooks]`:
//! the demo upstream of `make run` and of the compose stack (see [`portcullis_host::echo`]).

use std::path::PathBuf;

const USAGE: &str = "usage: portcullis-echo --listen 127.0.0.1:10081 [--name NAME] \
     [--tls-cert F --tls-key F] [--file /url/path=FILE]... [--test-hooks]";

fn main() {
    std::process::exit(match real_main() {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("portcullis-echo: {msg}");
            1
        }
    });
}

fn real_main() -> Result<(), String> {
    let mut listen = None;
    let mut name = "echo".to_owned();
    let (mut cert, mut key) = (None, None);
    let mut files = std::collections::HashMap::new();
    let mut hooks = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => listen = Some(value()?),
            "--name" => name = value()?,
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--test-hooks" => hooks = true,
            "--file" => {
                let spec = value()?;
                let (url, file) = spec
                    .split_once('=')
                    .filter(|(url, file)| url.starts_with('/') && !file.is_empty())
                    .ok_or_else(|| format!("--file {spec:?}: expected /url/path=FILE\n{USAGE}"))?;
                let content =
                    std::fs::read(file).map_err(|e| format!("--file {spec:?}: {file}: {e}"))?;
                files.insert(url.to_owned(), content);
            }
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(
            portcullis_host::proxy::tls::server_config_from_files(&c, &k)
                .map_err(|e| format!("{e:#}"))?,
        ),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".to_owned()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        eprintln!("portcullis-echo {name} listening on {listen}");
        tokio::select! {
            _ = portcullis_host::echo::serve(listener, name, files.into(), hooks, tls) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
