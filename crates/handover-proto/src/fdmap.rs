//! The environment a worker gets describing its sockets: `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! the JSON maps of names to `/dev/fd/N` paths and to fd numbers.
//!
//! Duplicate names (systemd allows them: one `.socket` unit with two `ListenStream=` lines and
//! one `FileDescriptorName=`) never collide silently: a name that occurs once maps to a single
//! value, a name that occurs more than once maps to an array of values in fd order.

use std::collections::HashMap;

use serde_json::Value;

/// The fd number of the first socket, as a JSON-friendly unsigned number.
const FIRST_FD: u64 = 3;

/// The socket-describing variables of one worker, except `LISTEN_PID` (set by the worker's
/// exec stub to its own pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEnv {
    /// `LISTEN_FDS`.
    pub listen_fds: String,
    /// `LISTEN_FDNAMES`: the names joined with `:`.
    pub listen_fdnames: String,
    /// JSON object: name -> `"/dev/fd/N"` (or an array of such strings for repeated names).
    pub paths_json: String,
    /// JSON object: name -> N (or an array of numbers for repeated names).
    pub numbers_json: String,
}

/// Builds the variables for sockets at fds `3..3+names.len()`, in the given order.
///
/// The JSON objects list each distinct name once, in order of first occurrence. They are
/// assembled from individually serialised keys and values because `serde_json`'s own map
/// sorts its keys, which would lose the fd order readers expect.
pub fn build(names: &[&str]) -> FdEnv {
    let groups = group_by_name(names);
    FdEnv {
        listen_fds: names.len().to_string(),
        listen_fdnames: names.join(":"),
        paths_json: render_object(&groups, |fd| Value::String(format!("/dev/fd/{fd}"))),
        numbers_json: render_object(&groups, Value::from),
    }
}

/// Collects the fd numbers of each distinct name, names in first-occurrence order and fds
/// ascending.
fn group_by_name<'a>(names: &[&'a str]) -> Vec<(&'a str, Vec<u64>)> {
    let mut groups: Vec<(&'a str, Vec<u64>)> = Vec::new();
    let mut slot_of: HashMap<&'a str, usize> = HashMap::new();
    for (fd, &name) in (FIRST_FD..).zip(names) {
        match slot_of.get(name).and_then(|&slot| groups.get_mut(slot)) {
            Some((_, fds)) => fds.push(fd),
            None => {
                slot_of.insert(name, groups.len());
                groups.push((name, vec![fd]));
            }
        }
    }
    groups
}

/// Renders a JSON object with one member per group: the single value for a name used once,
/// an array of values for a name used more than once.
fn render_object(groups: &[(&str, Vec<u64>)], value_of: impl Fn(u64) -> Value) -> String {
    let members: Vec<String> = groups
        .iter()
        .map(|(name, fds)| {
            let value = match fds.as_slice() {
                [single] => value_of(*single),
                many => Value::Array(many.iter().map(|&fd| value_of(fd)).collect()),
            };
            // `Value`'s `Display` is infallible JSON serialisation, escaping included.
            format!("{}:{}", Value::String((*name).to_owned()), value)
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{self, ListenEnv, ListenSpec};
    use proptest::prelude::*;
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

    /// The members of a JSON object in the order they appear in the text, which
    /// `serde_json::Value` would forget.
    #[derive(Debug, PartialEq)]
    struct Ordered(Vec<(String, Value)>);

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            /// Collects map entries as they arrive.
            struct Collect;
            impl<'de> Visitor<'de> for Collect {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        out.push(entry);
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(Collect)
        }
    }

    /// Parses produced JSON, keeping member order.
    fn members(json: &str) -> Vec<(String, Value)> {
        serde_json::from_str::<Ordered>(json)
            .expect("valid JSON object")
            .0
    }

    #[test]
    fn no_sockets() {
        assert_eq!(
            build(&[]),
            FdEnv {
                listen_fds: "0".into(),
                listen_fdnames: String::new(),
                paths_json: "{}".into(),
                numbers_json: "{}".into(),
            }
        );
    }

    #[test]
    fn one_socket() {
        let env = build(&["web"]);
        assert_eq!(env.listen_fds, "1");
        assert_eq!(env.listen_fdnames, "web");
        assert_eq!(env.paths_json, r#"{"web":"/dev/fd/3"}"#);
        assert_eq!(env.numbers_json, r#"{"web":3}"#);
    }

    #[test]
    fn keys_keep_fd_order() {
        let env = build(&["zeta", "alpha", "mid"]);
        assert_eq!(env.listen_fds, "3");
        assert_eq!(env.listen_fdnames, "zeta:alpha:mid");
        assert_eq!(
            env.paths_json,
            r#"{"zeta":"/dev/fd/3","alpha":"/dev/fd/4","mid":"/dev/fd/5"}"#
        );
        assert_eq!(env.numbers_json, r#"{"zeta":3,"alpha":4,"mid":5}"#);
    }

    #[test]
    fn duplicates_become_arrays() {
        let env = build(&["b", "a", "b", "c", "b"]);
        assert_eq!(env.listen_fdnames, "b:a:b:c:b");
        assert_eq!(
            env.paths_json,
            r#"{"b":["/dev/fd/3","/dev/fd/5","/dev/fd/7"],"a":"/dev/fd/4","c":"/dev/fd/6"}"#
        );
        assert_eq!(env.numbers_json, r#"{"b":[3,5,7],"a":4,"c":6}"#);
    }

    #[test]
    fn empty_names_are_the_empty_key() {
        let env = build(&["", "x", ""]);
        assert_eq!(env.listen_fds, "3");
        assert_eq!(env.listen_fdnames, ":x:");
        assert_eq!(
            env.paths_json,
            r#"{"":["/dev/fd/3","/dev/fd/5"],"x":"/dev/fd/4"}"#
        );
        assert_eq!(env.numbers_json, r#"{"":[3,5],"x":4}"#);
    }

    #[test]
    fn names_are_escaped() {
        let tricky = [
            "say \"hi\"",
            "back\\slash",
            "with space",
            "{}",
            "a,b",
            "\"",
            "\\",
        ];
        let env = build(&tricky);
        let paths = members(&env.paths_json);
        let numbers = members(&env.numbers_json);
        assert_eq!(paths.len(), tricky.len());
        for (i, name) in tricky.iter().enumerate() {
            let fd = 3 + i as u64;
            assert_eq!(
                paths[i],
                (name.to_string(), Value::from(format!("/dev/fd/{fd}")))
            );
            assert_eq!(numbers[i], (name.to_string(), Value::from(fd)));
        }
        assert!(env.paths_json.contains(r#""say \"hi\"""#));
        assert!(env.paths_json.contains(r#""back\\slash""#));
    }

    #[test]
    fn names_listen_would_reject_are_still_encoded() {
        // build() takes names handover already validated, but must not produce broken JSON
        // even if it were given something else.
        let env = build(&["tab\there", "nl\nx", "日本", "\u{7f}"]);
        let keys: Vec<String> = members(&env.paths_json)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["tab\there", "nl\nx", "日本", "\u{7f}"]);
    }

    #[test]
    fn large_counts() {
        let names: Vec<String> = (0..1000).map(|i| format!("s{}", i % 10)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let env = build(&refs);
        assert_eq!(env.listen_fds, "1000");
        let numbers = members(&env.numbers_json);
        assert_eq!(numbers.len(), 10);
        assert_eq!(numbers[0].0, "s0");
        let fds = numbers[0].1.as_array().expect("array");
        assert_eq!(fds.len(), 100);
        assert_eq!(fds.first(), Some(&Value::from(3)));
        assert_eq!(fds.last(), Some(&Value::from(993)));
    }

    /// Expands a JSON value of the maps into the fd numbers it names, via `to_fd`.
    fn fds_of(value: &Value, to_fd: impl Fn(&Value) -> Option<u64>) -> Vec<u64> {
        match value {
            Value::Array(items) => items.iter().filter_map(&to_fd).collect(),
            single => to_fd(single).into_iter().collect(),
        }
    }

    proptest! {
        #[test]
        fn maps_describe_every_fd_once(
            names in proptest::collection::vec(
                prop_oneof!["[a-c]{0,1}", ".{0,8}"], 0..30),
        ) {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let env = build(&refs);
            prop_assert_eq!(env.listen_fds, names.len().to_string());
            prop_assert_eq!(env.listen_fdnames, names.join(":"));

            let mut expected_keys: Vec<&str> = Vec::new();
            for name in &refs {
                if !expected_keys.contains(name) {
                    expected_keys.push(name);
                }
            }
            let paths = members(&env.paths_json);
            let numbers = members(&env.numbers_json);
            let path_keys: Vec<&str> = paths.iter().map(|(k, _)| k.as_str()).collect();
            let number_keys: Vec<&str> = numbers.iter().map(|(k, _)| k.as_str()).collect();
            prop_assert_eq!(&path_keys, &expected_keys);
            prop_assert_eq!(&number_keys, &expected_keys);

            for ((key, path), (_, number)) in paths.iter().zip(&numbers) {
                let want: Vec<u64> = (3u64..)
                    .zip(&names)
                    .filter(|(_, n)| *n == key)
                    .map(|(fd, _)| fd)
                    .collect();
                // A name used once is a scalar, one used more often an array.
                prop_assert_eq!(path.is_array(), want.len() > 1);
                prop_assert_eq!(number.is_array(), want.len() > 1);
                let from_paths = fds_of(path, |v| {
                    v.as_str()?.strip_prefix("/dev/fd/")?.parse().ok()
                });
                prop_assert_eq!(&from_paths, &want);
                prop_assert_eq!(&fds_of(number, Value::as_u64), &want);
            }
        }

        #[test]
        fn listen_variables_round_trip(
            names in proptest::collection::vec("[ -9;-~]{0,12}", 1..30),
            own_pid in 1..=i32::MAX as u32,
        ) {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let env = build(&refs);
            let listen = ListenEnv {
                pid: Some(own_pid.to_string()),
                fds: Some(env.listen_fds),
                fdnames: Some(env.listen_fdnames),
            };
            prop_assert_eq!(listen::parse(&listen, own_pid), Ok(Some(ListenSpec { names })));
        }
    }
}
