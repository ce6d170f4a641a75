//! The control protocol: JSON lines over a unix socket, versioned.
//!
//! A client sends one request line and reads response lines until the final one (every
//! event but `progress` is final) or end of file. Documented in docs/control-protocol.md.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Longest request line the server reads, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestLine {
    /// Protocol version; must be [`VERSION`].
    pub v: u32,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start a new generation and report until it serves or fails.
    Reload {
        /// New worker count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<u32>,
        /// Variables for the new generation, `[key, value]` pairs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
        /// Replace the environment rather than override single variables.
        #[serde(default)]
        replace_env: bool,
        /// New working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Abort the reload if it has not finished after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Abort the running reload.
    Abort,
    /// Stop everything; the connection stays open until handover exits.
    Stop,
    /// Change the number of workers of the serving generation.
    Scale {
        /// The new count.
        count: u32,
    },
    /// The state as JSON.
    Status,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseLine {
    /// Protocol version.
    pub v: u32,
    /// The response.
    #[serde(flatten)]
    pub response: Response,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Response {
    /// Reload progress (not final).
    Progress {
        /// What happens.
        message: String,
    },
    /// The reload finished: `generation` serves.
    Done {
        /// The serving generation.
        generation: u64,
    },
    /// The reload failed, the previous generation keeps serving.
    Failed {
        /// Why.
        reason: String,
    },
    /// Another reload is running.
    Busy {
        /// The generation it is starting.
        generation: u64,
    },
    /// A request without more to say succeeded (abort, scale).
    Ok {
        /// Details.
        message: String,
    },
    /// handover is stopping; the connection closes when it has exited.
    Stopping,
    /// The state.
    Status {
        /// The snapshot.
        status: Box<crate::status::Status>,
    },
    /// The request was refused or malformed.
    Error {
        /// Why.
        message: String,
    },
}

impl Response {
    /// Whether this is the last line of an answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Progress { .. } | Response::Stopping)
    }

    /// Renders as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(&ResponseLine {
            v: VERSION,
            response: self.clone(),
        })
        .unwrap_or_else(|_| {
            r#"{"v":1,"event":"error","message":"unrenderable response"}"#.to_string()
        });
        line.push('\n');
        line
    }
}

impl Request {
    /// Renders as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(&RequestLine {
            v: VERSION,
            request: self.clone(),
        })
        .unwrap_or_else(|_| r#"{"v":1,"cmd":"status"}"#.to_string());
        line.push('\n');
        line
    }
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not a known request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("unsupported protocol version {0} (this handover speaks {VERSION})")]
    Version(u32),
}

/// The fields each command may carry, besides `v` and `cmd`.
fn fields_of(cmd: &str) -> Option<&'static [&'static str]> {
    Some(match cmd {
        "reload" => &["workers", "env", "replace_env", "cwd", "timeout_ms"],
        "scale" => &["count"],
        "abort" | "stop" | "status" => &[],
        _ => return None,
    })
}

/// A JSON object whose keys are unique: serde_json alone keeps the last of two equal keys
/// without a word, and a request is refused rather than read in a way its sender did not mean.
struct UniqueObject(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate field {key:?}"
                        )));
                    }
                    let value = map.next_value()?;
                    object.insert(key, value);
                }
                Ok(UniqueObject(object))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// Parses one request line: a JSON object with `"v"`, a known `"cmd"`, and only the fields
/// that command takes, each once.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let malformed = |e: serde_json::Error| RequestError::Malformed(e.to_string());
    let UniqueObject(mut object) = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() && !e.to_string().starts_with("duplicate field") {
            RequestError::Malformed("a request is a JSON object".into())
        } else {
            malformed(e)
        }
    })?;
    let version = object
        .remove("v")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| RequestError::Malformed("missing protocol version \"v\"".into()))?;
    if version != u64::from(VERSION) {
        return Err(RequestError::Version(
            u32::try_from(version).unwrap_or(u32::MAX),
        ));
    }
    let cmd = match object.get("cmd") {
        Some(serde_json::Value::String(cmd)) => cmd.clone(),
        Some(_) => return Err(RequestError::Malformed("\"cmd\" must be a string".into())),
        None => return Err(RequestError::Malformed("missing field \"cmd\"".into())),
    };
    let Some(fields) = fields_of(&cmd) else {
        return Err(RequestError::Malformed(format!("unknown command {cmd:?}")));
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| *k != "cmd" && !fields.contains(&k.as_str()))
    {
        return Err(RequestError::Malformed(format!(
            "unknown field {unknown:?} in a {cmd} request"
        )));
    }
    let request: Request =
        serde_json::from_value(serde_json::Value::Object(object)).map_err(malformed)?;
    if let Request::Reload { env, .. } = &request {
        for (name, value) in env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(RequestError::Malformed(format!(
                    "env: {name:?} is not a variable name (empty, or holding '=' or a NUL)"
                )));
            }
            if value.contains('\0') {
                return Err(RequestError::Malformed(format!(
                    "env: the value of {name} holds a NUL"
                )));
            }
        }
    }
    Ok(request)
}

/// Parses one response line.
pub fn parse_response(line: &[u8]) -> Result<Response, RequestError> {
    let parsed: ResponseLine =
        serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))?;
    Ok(parsed.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Reload {
                workers: Some(3),
                env: vec![("A".into(), "b=c".into())],
                replace_env: true,
                cwd: Some("/srv/2".into()),
                timeout_ms: Some(1000),
            },
            Request::Reload {
                workers: None,
                env: vec![],
                replace_env: false,
                cwd: None,
                timeout_ms: None,
            },
            Request::Abort,
            Request::Stop,
            Request::Scale { count: 4 },
            Request::Status,
        ];
        for request in requests {
            let line = request.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(request));
        }
    }

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(Request::Status.to_line(), "{\"v\":1,\"cmd\":\"status\"}\n");
        assert_eq!(
            Request::Scale { count: 2 }.to_line(),
            "{\"v\":1,\"cmd\":\"scale\",\"count\":2}\n"
        );
        assert_eq!(
            Response::Done { generation: 7 }.to_line(),
            "{\"v\":1,\"event\":\"done\",\"generation\":7}\n"
        );
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for line in [
            &b""[..],
            b"{",
            b"null",
            b"{\"v\":1}",
            b"{\"v\":1,\"cmd\":\"explode\"}",
            b"{\"v\":2,\"cmd\":\"status\"}",
            b"{\"v\":1,\"cmd\":\"scale\",\"count\":-1}",
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            parse_request(b"{\"v\":2,\"cmd\":\"status\"}"),
            Err(RequestError::Version(2))
        );
    }

    /// docs/control-protocol.md: unknown fields are errors, for every command.
    #[test]
    fn unknown_fields_are_refused_for_every_command() {
        for (line, field) in [
            (&br#"{"v":1,"cmd":"status","verbose":true}"#[..], "verbose"),
            (br#"{"v":1,"cmd":"abort","force":1}"#, "force"),
            (br#"{"v":1,"cmd":"stop","timeout":5}"#, "timeout"),
            (br#"{"v":1,"cmd":"scale","count":2,"workers":3}"#, "workers"),
            (br#"{"v":1,"cmd":"reload","worker":3}"#, "worker"),
        ] {
            let err = parse_request(line).unwrap_err().to_string();
            assert!(
                err.contains(&format!("unknown field \"{field}\"")),
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Scenario 47: override names that would corrupt the worker's environment are refused.
    #[test]
    fn bad_override_names_are_refused() {
        for line in [
            &br#"{"v":1,"cmd":"reload","env":[["NOTIFY_SOCKET=/x","y"]]}"#[..],
            br#"{"v":1,"cmd":"reload","env":[["","y"]]}"#,
            br#"{"v":1,"cmd":"reload","env":[["A\u0000B","y"]]}"#,
            br#"{"v":1,"cmd":"reload","env":[["A","b\u0000c"]]}"#,
        ] {
            assert!(
                parse_request(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(parse_request(br#"{"v":1,"cmd":"reload","env":[["A","b=c"]]}"#).is_ok());
    }

    /// Two equal keys are an error, not "the last one wins".
    #[test]
    fn duplicate_fields_are_refused() {
        for line in [
            &br#"{"v":1,"cmd":"scale","count":2,"count":200}"#[..],
            br#"{"v":1,"cmd":"status","cmd":"stop"}"#,
            br#"{"v":1,"v":1,"cmd":"status"}"#,
            br#"{"v":1,"cmd":"reload","timeout_ms":1,"timeout_ms":999999}"#,
        ] {
            let err = parse_request(line).unwrap_err().to_string();
            assert!(
                err.contains("duplicate field"),
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(matches!(
            parse_request(br#"{"v":1,"cmd":"explode"}"#),
            Err(RequestError::Malformed(m)) if m == "unknown command \"explode\""
        ));
    }

    #[test]
    fn only_progress_and_stopping_are_not_final() {
        assert!(!Response::Progress {
            message: String::new()
        }
        .is_final());
        assert!(!Response::Stopping.is_final());
        assert!(Response::Failed {
            reason: String::new()
        }
        .is_final());
        assert!(Response::Busy { generation: 1 }.is_final());
    }
}
