//! Broken answers, written on the socket of a [`crate::server::TestServer`] connection in
//! place of the normal one: the ways an identity provider (or any upstream) can fail that a
//! gateway must survive.
//!
//! | fault | on the wire |
//! | --- | --- |
//! | [`Fault::ResetMidBody`] | the status line and headers with a `Content-Length` larger than what follows, part of the body, then RST (`SO_LINGER` 0) |
//! | [`Fault::ResetBeforeHeaders`] | the request is read, then RST: no byte of an answer |
//! | [`Fault::Garbage`] | `200`, `content-type: application/json`, a body that is not JSON (nor UTF-8) |
//! | [`Fault::Huge`] | `200` with the normal answer padded with whitespace to [`HUGE_BODY_BYTES`]: still valid JSON, far too large |
//! | [`Fault::Slow`] | the normal answer, after a sleep (make it longer than the caller's timeout) |
//! | [`Fault::SlowBody`] | the status line and headers at once, the body after a sleep: the caller's timeout fires after the headers arrived |
//! | [`Fault::Status`] | that status (e.g. `500`) with a short text body |

use crate::server::Answer;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The size of [`Fault::Huge`]'s body: 8 MiB.
pub const HUGE_BODY_BYTES: usize = 8 << 20;

/// How long a connection stays open after the bytes of a reset fault were written, before the
/// RST: long enough for the peer to read them first.
pub const BEFORE_RESET: Duration = Duration::from_millis(150);

/// A broken answer (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Headers and part of the body, then a reset.
    ResetMidBody,
    /// A reset before any byte of the answer.
    ResetBeforeHeaders,
    /// `200` whose body is not JSON.
    Garbage,
    /// `200` with an 8 MiB body.
    Huge,
    /// The normal answer, this much later.
    Slow(Duration),
    /// The normal answer's headers at once, its body this much later.
    SlowBody(Duration),
    /// This status, with a short text body.
    Status(u16),
}

impl Fault {
    /// Every fault: those of issue 13 (with `slow` as the delay of both slow faults and `500`
    /// as the status).
    pub fn all(slow: Duration) -> [Fault; 7] {
        [
            Fault::ResetMidBody,
            Fault::ResetBeforeHeaders,
            Fault::Garbage,
            Fault::Huge,
            Fault::Slow(slow),
            Fault::SlowBody(slow),
            Fault::Status(500),
        ]
    }

    /// A short name, for test names and messages.
    pub fn name(&self) -> String {
        match self {
            Fault::ResetMidBody => "reset mid-body".to_owned(),
            Fault::ResetBeforeHeaders => "reset before headers".to_owned(),
            Fault::Garbage => "200 with garbage".to_owned(),
            Fault::Huge => "200 with an 8 MiB body".to_owned(),
            Fault::Slow(d) => format!("slow ({} ms)", d.as_millis()),
            Fault::SlowBody(d) => format!("slow body ({} ms)", d.as_millis()),
            Fault::Status(s) => format!("status {s}"),
        }
    }
}

/// What the connection does after a fault was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// It may serve the next request.
    KeepGoing,
    /// It must be closed (with RST: `SO_LINGER` 0 is set already).
    Reset,
}

/// Makes closing `stream` send RST instead of FIN.
pub fn arm_reset(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// The status line and headers of `answer` with this `content_length`.
fn head(answer: &Answer, content_length: usize, close: bool) -> Vec<u8> {
    let reason = if answer.status == 200 { "OK" } else { "Not OK" };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", answer.status);
    for (k, v) in &answer.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {content_length}\r\n"));
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Writes `answer` normally.
pub fn write_answer(out: &mut TcpStream, answer: &Answer, close: bool) -> io::Result<()> {
    let mut bytes = head(answer, answer.body.len(), close);
    bytes.extend_from_slice(&answer.body);
    out.write_all(&bytes)?;
    out.flush()
}

/// Writes `fault` in place of `answer` (the normal answer, which some faults send late, in
/// part or padded).
pub fn write_fault(
    out: &mut TcpStream,
    fault: Fault,
    answer: &Answer,
    close: bool,
) -> io::Result<After> {
    match fault {
        Fault::ResetBeforeHeaders => {
            arm_reset(out)?;
            Ok(After::Reset)
        }
        Fault::ResetMidBody => {
            // A body of at least 64 bytes, so that there is a part to send and a part missing.
            let mut body = answer.body.clone();
            if body.len() < 64 {
                body.resize(64, b' ');
            }
            let sent = body.get(..body.len() / 2).unwrap_or_default();
            let mut bytes = head(
                &Answer {
                    status: 200,
                    ..answer.clone()
                },
                body.len() * 2,
                false,
            );
            bytes.extend_from_slice(sent);
            out.write_all(&bytes)?;
            out.flush()?;
            std::thread::sleep(BEFORE_RESET);
            arm_reset(out)?;
            Ok(After::Reset)
        }
        Fault::Garbage => {
            let garbage = Answer {
                status: 200,
                headers: vec![("content-type".to_owned(), "application/json".to_owned())],
                body: b"<html>not json \xff\xfe {{{ \"keys\": [".to_vec(),
            };
            write_answer(out, &garbage, close)?;
            Ok(After::KeepGoing)
        }
        Fault::Huge => {
            let mut body = answer.body.clone();
            body.resize(HUGE_BODY_BYTES.max(body.len()), b' ');
            let huge = Answer {
                status: 200,
                headers: answer.headers.clone(),
                body,
            };
            // The peer may stop reading (and reset) part-way: the write deadline of the
            // connection bounds this.
            write_answer(out, &huge, close)?;
            Ok(After::KeepGoing)
        }
        Fault::Slow(delay) => {
            std::thread::sleep(delay);
            write_answer(out, answer, close)?;
            Ok(After::KeepGoing)
        }
        Fault::SlowBody(delay) => {
            out.write_all(&head(answer, answer.body.len(), close))?;
            out.flush()?;
            std::thread::sleep(delay);
            out.write_all(&answer.body)?;
            out.flush()?;
            Ok(After::KeepGoing)
        }
        Fault::Status(status) => {
            let failed = Answer {
                status,
                headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
                body: format!("injected fault: status {status}\n").into_bytes(),
            };
            write_answer(out, &failed, close)?;
            Ok(After::KeepGoing)
        }
    }
}
