//! A small blocking HTTP/1.1 client for the CLI and the tests: one request per connection, over
//! the Unix socket or TCP (with a bearer token), whole responses or SSE frames as they arrive.
//! Standard library only: the two transports and the chunked encoding are all it needs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Longest response line or header the client accepts.
const MAX_LINE: usize = 64 * 1024;

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port` and the bearer token.
    Tcp {
        addr: String,
        token: Option<String>,
    },
}

/// A blocking client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    /// How long a read may wait for the server (a stream's heartbeat arrives every 15 s).
    pub read_timeout: Duration,
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(io::Error::other)
    }
}

trait Connection: Read + Write + Send {}

/// A response's status and headers, and the connection its body follows on.
type Head = (u16, Vec<(String, String)>, BufReader<Box<dyn Connection>>);

impl<T: Read + Write + Send> Connection for T {}

/// One request's extra parts.
#[derive(Debug, Default, Clone)]
pub struct Extra<'a> {
    pub headers: Vec<(&'a str, String)>,
    /// A body sent as is (instead of JSON), with its content type.
    pub raw_body: Option<(Vec<u8>, &'a str)>,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            read_timeout: Duration::from_secs(60),
        }
    }

    fn connect(&self) -> io::Result<Box<dyn Connection>> {
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("cannot reach the server at {}: {err}", path.display()),
                    )
                })?;
                stream.set_read_timeout(Some(self.read_timeout))?;
                Ok(Box::new(stream))
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = TcpStream::connect(addr).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("cannot reach the server at {addr}: {err}"),
                    )
                })?;
                stream.set_read_timeout(Some(self.read_timeout))?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
        }
    }

    /// Sends one request and reads the status line and headers; the body follows on the reader.
    fn start(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
        extra: &Extra<'_>,
    ) -> io::Result<Head> {
        let mut connection = self.connect()?;
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp { addr, .. } => addr.clone(),
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
        if let Endpoint::Tcp {
            token: Some(token), ..
        } = &self.endpoint
        {
            head.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        for (name, value) in &extra.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body: Option<(Vec<u8>, &str)> = match (&extra.raw_body, json) {
            (Some((bytes, kind)), _) => Some((bytes.clone(), kind)),
            (None, Some(value)) => Some((serde_json::to_vec(value)?, "application/json")),
            (None, None) => None,
        };
        match &body {
            Some((bytes, kind)) => head.push_str(&format!(
                "content-type: {kind}\r\ncontent-length: {}\r\n\r\n",
                bytes.len()
            )),
            None => head.push_str("content-length: 0\r\n\r\n"),
        }
        connection.write_all(head.as_bytes())?;
        if let Some((bytes, _)) = &body {
            // A server refusing an oversized body may close before reading it all.
            if let Err(err) = connection.write_all(bytes) {
                if err.kind() != io::ErrorKind::BrokenPipe
                    && err.kind() != io::ErrorKind::ConnectionReset
                {
                    return Err(err);
                }
            }
        }
        connection.flush()?;
        let mut reader = BufReader::new(connection);
        let status_line = read_line(&mut reader)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP response: {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader)?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        Ok((status, headers, reader))
    }

    /// One request, the whole response.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
        extra: &Extra<'_>,
    ) -> io::Result<Reply> {
        let (status, headers, reader) = self.start(method, path, json, extra)?;
        let mut body = Vec::new();
        body_reader(&headers, reader).read_to_end(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// `call` with JSON in and no extra headers.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> io::Result<Reply> {
        self.call(method, path, json, &Extra::default())
    }

    /// Opens an SSE stream. A status other than 200 comes back as the whole response.
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
        extra: &Extra<'_>,
    ) -> io::Result<Result<Events, Reply>> {
        let (status, headers, reader) = self.start(method, path, json, extra)?;
        let mut body = body_reader(&headers, reader);
        if status != 200 {
            let mut bytes = Vec::new();
            body.read_to_end(&mut bytes)?;
            return Ok(Err(Reply {
                status,
                headers,
                body: bytes,
            }));
        }
        Ok(Ok(Events {
            headers,
            reader: BufReader::new(body),
        }))
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(io::Error::other)
}

fn body_reader(
    headers: &[(String, String)],
    reader: BufReader<Box<dyn Connection>>,
) -> Box<dyn Read + Send> {
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<u64>().ok());
    if chunked {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        })
    } else if let Some(length) = length {
        Box::new(reader.take(length))
    } else {
        Box::new(reader)
    }
}

/// Decodes `transfer-encoding: chunked`.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = read_line(&mut self.inner)?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let read = self.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended mid-chunk",
            ));
        }
        self.left -= read as u64;
        if self.left == 0 {
            read_line(&mut self.inner)?;
        }
        Ok(read)
    }
}

/// One SSE frame: its `id` (a rev) when it has one, and its `data` JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub data: serde_json::Value,
}

/// An open SSE stream, read frame by frame. Dropping it closes the connection.
pub struct Events {
    pub headers: Vec<(String, String)>,
    reader: BufReader<Box<dyn Read + Send>>,
}

impl Events {
    /// The next frame; `Ok(None)` when the server ended the stream. Heartbeats are skipped
    /// (and counted in `heartbeats` when given).
    pub fn next_frame(&mut self) -> io::Result<Option<SseFrame>> {
        self.next_frame_counting(&mut 0)
    }

    pub fn next_frame_counting(&mut self, heartbeats: &mut u64) -> io::Result<Option<SseFrame>> {
        let mut id = None;
        let mut data = String::new();
        loop {
            let line = match read_line(&mut self.reader) {
                Ok(line) => line,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(err) => return Err(err),
            };
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).map_err(io::Error::other)?;
                return Ok(Some(SseFrame { id, data }));
            }
            if let Some(comment) = line.strip_prefix(':') {
                if comment.trim() == "hb" {
                    *heartbeats += 1;
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().parse().ok();
            } else if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
    }
}
