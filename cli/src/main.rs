//! `portcullis`: check a filter configuration before deploying it, hash API keys for it, and
//! mint signed test tokens.
//!
//! The configuration is read by exactly the code the filter runs
//! ([`portcullis::config::Config::from_json`]), so `check` accepts what the filter accepts and
//! reports the same errors.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Parser, Subcommand};
use portcullis::apikey::{MAX_API_KEY_BYTES, hash_hex};
use portcullis::config::{Config, MAX_CONFIG_BYTES, ProviderKind};
use portcullis::jwt::{Algorithm, b64};
use portcullis::mint::{MintError, SigningKey};
use serde_json::{Map, Value};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Exit status of `check` when the configuration has errors.
const EXIT_INVALID: u8 = 1;
/// Exit status when the command could not do its job (unreadable file, bad arguments, …).
const EXIT_FAILURE: u8 = 2;

/// Largest file read for keys, secrets and claims: far above any real one, and it keeps a
/// mistaken path (a device, a huge log) from exhausting memory.
const MAX_SMALL_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Check Portcullis configurations, hash API keys and mint test tokens",
    after_help = "Exit status: 0 on success, 1 when `check` finds configuration errors, 2 on any other error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file with the filter's own parser.
    ///
    /// Prints every error as `path: reason`, one per line, on stderr and exits 1; on success
    /// prints a one-line summary on stdout.
    Check {
        /// The JSON configuration document (`-` reads standard input).
        file: PathBuf,
    },
    /// Print the SHA-256 to store in the `sha256` of an API-key entry.
    ///
    /// Without KEY, the key is read from the first line of standard input, so that it does
    /// not end up in the shell history.
    HashKey(HashKeyArgs),
    /// Mint a signed JWT (for tests and demos) and print it on stdout.
    ///
    /// Sets `iat` to now and `exp` to now + --ttl. Claims are applied in this order, later
    /// ones overriding earlier ones: iat/exp, --claims, --iss/--sub/--aud/--scope, --claim.
    Token(TokenArgs),
}

#[derive(Args)]
struct HashKeyArgs {
    /// The API key (omit it to read the key from standard input).
    #[arg(conflicts_with = "generate")]
    key: Option<String>,
    /// Make a new random key (32 random bytes, base64url) and print it with its hash.
    #[arg(long)]
    generate: bool,
    /// Prefix of a generated key, so that leaked keys are easy to recognise and scan for.
    #[arg(long, default_value = "pk_", requires = "generate")]
    prefix: String,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    key: KeySource,
    /// Signature algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512,
    /// ES256, ES384, ES512 or EdDSA. It must fit the key.
    #[arg(long, value_parser = parse_alg)]
    alg: Algorithm,
    /// `kid` header, naming the configured key that verifies the token (default: the `kid` of
    /// the --jwk key, else none).
    #[arg(long)]
    kid: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// `sub` claim.
    #[arg(long)]
    sub: Option<String>,
    /// `aud` claim; repeat for several audiences (then `aud` is an array).
    #[arg(long)]
    aud: Vec<String>,
    /// `scope` claim: space-separated scopes, e.g. "orders:read orders:write".
    #[arg(long)]
    scope: Option<String>,
    /// Lifetime in seconds: `exp` = now + TTL.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Extra claim NAME=VALUE; VALUE is JSON if it parses as JSON (`admin=true`, `n=5`,
    /// `roles=["a","b"]`), else a string (`tenant=acme`; write `n="5"` for the string "5").
    /// Repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claim: Vec<String>,
    /// A JSON object of claims, given inline (starting with `{`) or as a file (`-` reads
    /// standard input).
    #[arg(long, value_name = "FILE_OR_JSON")]
    claims: Option<String>,
}

/// Where the signing key comes from: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct KeySource {
    /// Signing key file: a PKCS#8 PEM private key ("BEGIN PRIVATE KEY": RSA, EC or Ed25519)
    /// for RS*, PS*, ES* and EdDSA; for HS*, a file whose bytes, byte for byte, are the secret
    /// (a trailing newline is part of it: write the file with `printf`, not `echo`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// For HS*: a JWK or JWK Set JSON file holding an `oct` key, whose `k` is the secret (with
    /// several, --kid picks one). The key's `kid` goes into the token unless --kid is given.
    #[arg(long, value_name = "FILE")]
    jwk: Option<PathBuf>,
}

/// Everything that makes the command fail. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("cannot write the output: {0}")]
    Write(#[source] io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => check(&file),
        Command::HashKey(args) => hash_key(&args),
        Command::Token(args) => token(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Nothing more can be done if stderr is gone too.
            let _ = writeln!(io::stderr(), "portcullis: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        format!("unknown algorithm (expected one of: {})", names.join(", "))
    })
}

/// Writes one line to stdout; a closed pipe is an error, not a panic.
fn out(line: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(CliError::Write)
}

fn warn(message: &str) {
    let _ = writeln!(io::stderr(), "portcullis: warning: {message}");
}

/// Reads a file (or standard input for `-`), refusing more than `limit` bytes.
fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    let name = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let read_err = |source| CliError::Read {
        path: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes))
            .map_err(read_err)?;
    }
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(CliError::TooLarge { path: name, limit });
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// check

fn check(file: &Path) -> Result<ExitCode, CliError> {
    let limit = u64::try_from(MAX_CONFIG_BYTES).unwrap_or(u64::MAX);
    let bytes = read_input(file, limit)?;
    match Config::from_json(&bytes) {
        Ok(config) => {
            out(&summary(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            let mut stderr = io::stderr().lock();
            for e in &errors {
                // Errors about the document as a whole (not JSON, too large) have no path.
                let path = if e.path.is_empty() {
                    "(document)"
                } else {
                    e.path.as_str()
                };
                let _ = writeln!(stderr, "{path}: {}", e.reason);
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

fn summary(config: &Config) -> String {
    let mut jwt = 0;
    let mut api_key = 0;
    let mut jwks = 0;
    let mut api_keys = 0;
    for p in &config.providers {
        match &p.kind {
            ProviderKind::Jwt(j) => {
                jwt += 1;
                jwks += j.keys.len();
            }
            ProviderKind::ApiKey(a) => {
                api_key += 1;
                api_keys += a.keys.len();
            }
        }
    }
    format!(
        "ok: {}, {} ({jwt} JWT, {api_key} API-key), {}, {}",
        count(config.routes.len(), "route"),
        count(config.providers.len(), "provider"),
        count(jwks, "signing key"),
        count(api_keys, "API key"),
    )
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

// ---------------------------------------------------------------------------------------------
// hash-key

fn hash_key(args: &HashKeyArgs) -> Result<ExitCode, CliError> {
    if args.generate {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| CliError::Random(e.to_string()))?;
        let key = format!("{}{}", args.prefix, URL_SAFE_NO_PAD.encode(bytes));
        check_key(&key)?;
        // The one place a secret is printed: the user asked for a new key.
        out(&format!("key:    {key}"))?;
        out(&format!("sha256: {}", hash_hex(&key)))?;
        return Ok(ExitCode::SUCCESS);
    }
    let key = match &args.key {
        Some(key) => key.clone(),
        None => read_key_line()?,
    };
    check_key(&key)?;
    if key.trim() != key {
        warn("the key starts or ends with whitespace, which HTTP header values cannot carry");
    }
    out(&hash_hex(&key))?;
    Ok(ExitCode::SUCCESS)
}

/// The first line of standard input, without its line ending.
fn read_key_line() -> Result<String, CliError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let _ = write!(io::stderr(), "API key: ");
        let _ = io::stderr().flush();
    }
    let limit = u64::try_from(MAX_API_KEY_BYTES).unwrap_or(u64::MAX);
    let mut line = Vec::new();
    stdin
        .lock()
        .take(limit.saturating_add(2))
        .read_until(b'\n', &mut line)
        .map_err(|source| CliError::Read {
            path: "standard input".to_owned(),
            source,
        })?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    String::from_utf8(line).map_err(|_| CliError::Invalid("the key is not UTF-8 text".to_owned()))
}

/// Refuses keys the filter would never accept.
fn check_key(key: &str) -> Result<(), CliError> {
    if key.is_empty() {
        return Err(CliError::Invalid(
            "no key given (pass it as an argument or on standard input)".to_owned(),
        ));
    }
    if key.len() > MAX_API_KEY_BYTES {
        return Err(CliError::Invalid(format!(
            "the key is longer than {MAX_API_KEY_BYTES} bytes; the filter refuses such keys"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// token

fn token(args: &TokenArgs) -> Result<ExitCode, CliError> {
    let key = signing_key(args)?;
    let claims = claims(args, unix_now()?)?;
    out(&key.sign(&claims)?)?;
    Ok(ExitCode::SUCCESS)
}

fn unix_now() -> Result<u64, CliError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CliError::Invalid("the system clock is before 1970".to_owned()))
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn signing_key(args: &TokenArgs) -> Result<SigningKey, CliError> {
    let alg = args.alg;
    let (key, jwk_kid) = match (&args.key.key, &args.key.jwk) {
        (Some(path), _) if is_hmac(alg) => {
            let secret = read_input(path, MAX_SMALL_FILE_BYTES)?;
            if secret.ends_with(b"\n") {
                warn("the secret file ends with a newline, which is part of the secret");
            }
            (SigningKey::hmac(&secret, alg)?, None)
        }
        (Some(path), _) => {
            let pem = String::from_utf8(read_input(path, MAX_SMALL_FILE_BYTES)?).map_err(|_| {
                CliError::Invalid(format!("{} is not a PEM text file", path.display()))
            })?;
            (SigningKey::from_pkcs8_pem(&pem, alg)?, None)
        }
        (None, Some(path)) if is_hmac(alg) => {
            let (secret, kid) = oct_secret(path, alg, args.kid.as_deref())?;
            (SigningKey::hmac(&secret, alg)?, kid)
        }
        (None, Some(_)) => {
            return Err(CliError::Invalid(format!(
                "--jwk only provides HMAC secrets; {alg} needs --key with a PKCS#8 PEM private key"
            )));
        }
        (None, None) => {
            return Err(CliError::Invalid("give --key or --jwk".to_owned()));
        }
    };
    Ok(match args.kid.clone().or(jwk_kid) {
        Some(kid) => key.with_kid(kid),
        None => key,
    })
}

/// The secret (`k`) and `kid` of the `oct` key in a JWK or JWK Set file.
fn oct_secret(
    path: &Path,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<(Vec<u8>, Option<String>), CliError> {
    let name = path.display();
    let doc: Value = serde_json::from_slice(&read_input(path, MAX_SMALL_FILE_BYTES)?)
        .map_err(|e| CliError::Invalid(format!("{name} is not valid JSON: {e}")))?;
    let keys: Vec<&Value> = match doc.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => {
            return Err(CliError::Invalid(format!("{name}: `keys` is not an array")));
        }
        None => vec![&doc],
    };
    let candidates: Vec<&Value> = keys
        .into_iter()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some("oct"))
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .collect();
    let key = match candidates.as_slice() {
        [one] => *one,
        [] => {
            return Err(CliError::Invalid(match kid {
                Some(kid) => format!("{name} has no oct key with kid {kid:?}"),
                None => format!("{name} has no oct (HMAC) key"),
            }));
        }
        _ => {
            return Err(CliError::Invalid(format!(
                "{name} has several oct keys; pick one with --kid"
            )));
        }
    };
    if let Some(pinned) = key.get("alg").and_then(Value::as_str)
        && pinned != alg.name()
    {
        return Err(CliError::Invalid(format!(
            "the key in {name} is pinned to {pinned}, so the filter would refuse an {alg} token"
        )));
    }
    let secret = key
        .get("k")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Invalid(format!("the oct key in {name} has no `k`")))
        .and_then(|k| {
            b64::decode(k)
                .map_err(|e| CliError::Invalid(format!("the `k` of the oct key in {name} is {e}")))
        })?;
    let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok((secret, kid))
}

fn claims(args: &TokenArgs, now: u64) -> Result<Value, CliError> {
    let exp = now
        .checked_add(args.ttl)
        .ok_or_else(|| CliError::Invalid("--ttl is too large".to_owned()))?;
    let mut claims = Map::new();
    claims.insert("iat".to_owned(), now.into());
    claims.insert("exp".to_owned(), exp.into());
    if let Some(given) = &args.claims {
        claims.extend(claims_object(given)?);
    }
    let strings = [
        ("iss", &args.iss),
        ("sub", &args.sub),
        ("scope", &args.scope),
    ];
    for (name, value) in strings {
        if let Some(v) = value {
            claims.insert(name.to_owned(), Value::String(v.clone()));
        }
    }
    match args.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".to_owned(), Value::String(one.clone()));
        }
        many => {
            claims.insert("aud".to_owned(), many.iter().cloned().collect());
        }
    }
    for claim in &args.claim {
        let (name, value) = parse_claim(claim)?;
        claims.insert(name, value);
    }
    Ok(Value::Object(claims))
}

/// `--claims`: inline JSON if it starts with `{`, else a file.
fn claims_object(given: &str) -> Result<Map<String, Value>, CliError> {
    let (text, what) = if given.trim_start().starts_with('{') {
        (given.as_bytes().to_vec(), "--claims".to_owned())
    } else {
        let path = Path::new(given);
        (
            read_input(path, MAX_SMALL_FILE_BYTES)?,
            path.display().to_string(),
        )
    };
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CliError::Invalid(format!("{what} is not a JSON object"))),
        Err(e) => Err(CliError::Invalid(format!("{what} is not valid JSON: {e}"))),
    }
}

/// `NAME=VALUE`, VALUE as JSON when it parses, else as a string.
fn parse_claim(claim: &str) -> Result<(String, Value), CliError> {
    let Some((name, value)) = claim.split_once('=') else {
        return Err(CliError::Invalid(format!(
            "--claim {claim:?} is not NAME=VALUE"
        )));
    };
    if name.is_empty() {
        return Err(CliError::Invalid(format!("--claim {claim:?} has no name")));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn claim_values_are_json_or_strings() {
        let cases = [
            ("admin=true", json!(true)),
            ("n=5", json!(5)),
            ("s=\"5\"", json!("5")),
            ("tenant=acme", json!("acme")),
            ("roles=[\"a\",\"b\"]", json!(["a", "b"])),
            ("empty=", json!("")),
            ("eq=a=b", json!("a=b")),
            ("obj={\"x\":1}", json!({"x": 1})),
        ];
        for (arg, expected) in cases {
            let (_, value) = parse_claim(arg).unwrap();
            assert_eq!(value, expected, "{arg}");
        }
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }

    #[test]
    fn claims_are_layered() {
        let args = TokenArgs::parse_from_for_test(&[
            "--key",
            "k",
            "--alg",
            "HS256",
            "--iss",
            "i",
            "--aud",
            "a",
            "--aud",
            "b",
            "--claims",
            r#"{"exp": 1, "sub": "from-claims", "iss": "overridden"}"#,
            "--claim",
            "sub=bob",
            "--ttl",
            "60",
        ]);
        assert_eq!(
            claims(&args, 1000).unwrap(),
            json!({"iat": 1000, "exp": 1, "iss": "i", "sub": "bob", "aud": ["a", "b"]})
        );
        let args = TokenArgs::parse_from_for_test(&["--key", "k", "--alg", "HS256", "--aud", "a"]);
        assert_eq!(
            claims(&args, 1000).unwrap(),
            json!({"iat": 1000, "exp": 4600, "aud": "a"})
        );
        let args = TokenArgs::parse_from_for_test(&[
            "--key",
            "k",
            "--alg",
            "HS256",
            "--ttl",
            "18446744073709551615",
        ]);
        assert!(claims(&args, 1000).is_err());
    }

    impl TokenArgs {
        fn parse_from_for_test(rest: &[&str]) -> TokenArgs {
            let argv = ["portcullis", "token"].iter().chain(rest);
            match Cli::parse_from(argv).command {
                Command::Token(args) => args,
                _ => unreachable!(),
            }
        }
    }
}
