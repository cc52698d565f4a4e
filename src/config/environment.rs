//! Settings from the environment: `WHARF_<KEY>` for a top-level key,
//! `WHARF_<SECTION>__<KEY>` (and deeper) for nested ones, laid over the
//! file's table before it is turned into a `Config`.
//!
//! Owns: naming (which variables are settings) and typing (a variable's
//! text becomes the type the key has in the documented example file).
//! Must not: read the environment itself (callers pass the variables, so
//! tests need not touch the process's) or know any key by name beyond the
//! few variables that are not settings.

use super::ConfigError;
use toml::{Table, Value};

const PREFIX: &str = "WHARF_";

/// Variables that share the prefix but are not settings: WHARF_LOG is
/// tracing's filter (it predates this and names a section), WHARF_CONFIG
/// names the file, WHARF_PASSWORD(_FILE) are read by the admin commands.
const NOT_SETTINGS: &[&str] = &[
    "WHARF_LOG",
    "WHARF_CONFIG",
    "WHARF_PASSWORD",
    "WHARF_PASSWORD_FILE",
];

/// Wharf's own tooling's variables (the test suite, CI, the load
/// generator), documented in docs/configuration.md: never settings, so
/// never typos.
const TOOLING: &[&str] = &[
    "WHARF_TEST_",
    "WHARF_SKIP_",
    "WHARF_CI_",
    "WHARF_LOAD_",
    "WHARF_REQUIRE_SERVICES",
    "WHARF_WEED",
    "WHARF_CRASH_ROUNDS",
    "WHARF_SMOKE_SCRIPT",
];

fn is_setting_name(name: &str) -> bool {
    name.starts_with(PREFIX)
        && !NOT_SETTINGS.contains(&name)
        && !TOOLING.iter().any(|t| name.starts_with(t))
}

/// Every key with a value, from the example file, which documents them all
/// (a unit test keeps it so): the source of each key's type.
fn key_types() -> Table {
    toml::from_str(&super::documented_example()).unwrap_or_default()
}

/// Lays the settings among `vars` over `table`. Returns the names of the
/// variables applied, for messages. A `WHARF_` variable that names no
/// setting (and is none of the few documented others) is an error naming
/// the closest setting: a typo must not pass silently.
pub fn overlay(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let types = key_types();
    let mut applied = Vec::new();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(k, _)| is_setting_name(k))
        .collect();
    vars.sort();
    for (name, text) in vars {
        let path: Vec<String> = name[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if !types.contains_key(&path[0]) {
            return Err(ConfigError::Invalid(unknown(&name, &types)));
        }
        let value = typed(&name, &path, &text, &types)?;
        set(table, &path, value).map_err(|why| ConfigError::Invalid(format!("{name}: {why}")))?;
        applied.push(name);
    }
    Ok(applied)
}

/// The message for a `WHARF_` variable that is no setting: the closest
/// one by edit distance.
fn unknown(name: &str, types: &Table) -> String {
    let mut names = Vec::new();
    setting_names(types, PREFIX, &mut names);
    let closest = names
        .iter()
        .map(|n| (edit_distance(name, n), n))
        .min()
        .filter(|(d, _)| *d <= name.len() / 3 + 2);
    let hint = match closest {
        Some((_, n)) => format!("; did you mean {n}?"),
        None => String::new(),
    };
    format!(
        "{name} is no setting{hint} (WHARF_<KEY>, or WHARF_<SECTION>__<KEY> with two underscores; \
         see docs/configuration.md)"
    )
}

/// Every setting's variable name: WHARF_KEY, WHARF_SECTION__KEY.
fn setting_names(table: &Table, at: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let name = format!("{at}{}", k.to_ascii_uppercase());
        match v {
            Value::Table(t) => setting_names(t, &format!("{name}__"), out),
            _ => out.push(name),
        }
    }
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `text` as the type `path` has in the example.
fn typed(name: &str, path: &[String], text: &str, types: &Table) -> Result<Value, ConfigError> {
    let mut at = types;
    let mut kind = None;
    for (i, key) in path.iter().enumerate() {
        match at.get(key) {
            Some(Value::Table(t)) if i + 1 < path.len() => at = t,
            Some(v) if i + 1 == path.len() => kind = Some(v),
            // A secret's `*_file` twin, which the example leaves commented.
            None if i + 1 == path.len() && key.ends_with("_file") => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{name}: no setting {} (sections and keys are separated by __)",
                    path.join(".")
                )))
            }
        }
    }
    let bad = |what: &str| ConfigError::Invalid(format!("{name}: expected {what}, got {text:?}"));
    Ok(match kind {
        Some(Value::String(_)) | None => Value::String(text.to_owned()),
        Some(Value::Integer(_)) => {
            Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(Value::Float(_)) => Value::Float(text.trim().parse().map_err(|_| bad("a number"))?),
        Some(Value::Boolean(_)) => {
            Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(bad("true or false")),
            })
        }
        // A TOML array (`["a", "b"]`, or inline tables for rules), or
        // plain comma-separated words.
        Some(Value::Array(_)) => match toml::from_str::<Table>(&format!("v = {text}")) {
            Ok(mut t) if matches!(t.get("v"), Some(Value::Array(_))) => {
                t.remove("v").unwrap_or(Value::Array(vec![]))
            }
            _ => Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
        },
        Some(Value::Table(_)) => {
            return Err(ConfigError::Invalid(format!(
                "{name} names the section [{}]; set its keys with {name}__<KEY>",
                path.join(".")
            )))
        }
        Some(Value::Datetime(_)) => return Err(bad("a date")),
    })
}

fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, sections) = path.split_last().ok_or("empty name")?;
    let mut at = table;
    for key in sections {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("{key} is not a section")),
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn top_level_and_nested_keys_take_their_types() {
        let mut t = Table::new();
        let applied = overlay(
            &mut t,
            vars(&[
                ("WHARF_ADDR", "0.0.0.0:5000"),
                ("WHARF_STORE_SHARDS", "4"),
                ("WHARF_FSYNC", "false"),
                ("WHARF_STORAGE__S3__SECRET_ACCESS_KEY", "12345"),
                ("WHARF_AUTH__ADMINS", "ops, alice"),
                ("WHARF_LIMITS__MAX_BLOB_BYTES", "1024"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 6);
        assert_eq!(t["addr"].as_str(), Some("0.0.0.0:5000"));
        assert_eq!(t["store_shards"].as_integer(), Some(4));
        assert_eq!(t["fsync"].as_bool(), Some(false));
        // A numeric secret stays a string: the key's type decides.
        assert_eq!(
            t["storage"]["s3"]["secret_access_key"].as_str(),
            Some("12345")
        );
        assert_eq!(t["auth"]["admins"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["limits"]["max_blob_bytes"].as_integer(), Some(1024));
    }

    #[test]
    fn other_programs_variables_are_left_alone() {
        let mut t = Table::new();
        let applied = overlay(
            &mut t,
            vars(&[
                ("WHARF_LOG", "debug"),
                ("WHARF_CONFIG", "/etc/wharf.toml"),
                ("WHARF_WEED", "/x"),
                ("WHARF_TEST_CLUSTER", "1"),
                ("WHARF_PASSWORD", "p"),
            ]),
        )
        .unwrap();
        assert!(applied.is_empty() && t.is_empty());
    }

    #[test]
    fn a_misspelt_key_in_a_known_section_is_an_error() {
        let e = overlay(
            &mut Table::new(),
            vars(&[("WHARF_STORAGE__S3__BUKET", "b")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("WHARF_STORAGE__S3__BUKET"), "{e}");
        let e = overlay(&mut Table::new(), vars(&[("WHARF_STORE_SHARDS", "many")])).unwrap_err();
        assert!(e.to_string().contains("expected an integer"), "{e}");
        let e = overlay(&mut Table::new(), vars(&[("WHARF_LIMITS", "x")])).unwrap_err();
        assert!(e.to_string().contains("names the section"), "{e}");
    }

    #[test]
    fn a_wharf_variable_that_is_no_setting_is_an_error_naming_the_closest() {
        for (typo, meant) in [
            (
                "WHARF_LIMITS_RATE_LIMIT_PER_SEC",
                "WHARF_LIMITS__RATE_LIMIT_PER_SEC",
            ),
            ("WHARF_GC_INTERVALL_SECS", "WHARF_GC_INTERVAL_SECS"),
            (
                "WHARF_LIMIT__RATE_LIMIT_PER_SEC",
                "WHARF_LIMITS__RATE_LIMIT_PER_SEC",
            ),
        ] {
            let e = overlay(&mut Table::new(), vars(&[(typo, "7")])).unwrap_err();
            let said = e.to_string();
            assert!(
                said.contains(typo) && said.contains(&format!("did you mean {meant}?")),
                "{said}"
            );
        }
        // The documented others and the tooling's own pass.
        let others = [
            ("WHARF_LOG", "debug"),
            ("WHARF_CONFIG", "/etc/wharf.toml"),
            ("WHARF_PASSWORD", "pw"),
            ("WHARF_TEST_CLUSTER", "1"),
            ("WHARF_WEED", "/usr/bin/weed"),
        ];
        assert!(overlay(&mut Table::new(), vars(&others))
            .unwrap()
            .is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_example_documents_every_key_so_every_key_has_a_type() {
        let example: super::super::Config =
            toml::from_str(&super::super::documented_example()).unwrap();
        let shown: Table = toml::from_str(&toml::to_string(&example).unwrap()).unwrap();
        fn missing(shown: &Table, types: &Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in shown {
                match (v, types.get(k)) {
                    (Value::Table(s), Some(Value::Table(t))) => {
                        missing(s, t, &format!("{at}{k}."), out)
                    }
                    (_, Some(_)) => {}
                    (_, None) => out.push(format!("{at}{k}")),
                }
            }
        }
        let mut out = Vec::new();
        missing(&shown, &key_types(), "", &mut out);
        assert!(out.is_empty(), "keys the example lacks: {out:?}");
        // And the *_file twins are accepted from the environment.
        let mut t = Table::new();
        overlay(
            &mut t,
            vars(&[("WHARF_METADATA__URL_FILE", "/run/secrets/db")]),
        )
        .unwrap();
        assert_eq!(t["metadata"]["url_file"].as_str(), Some("/run/secrets/db"));
    }

    #[test]
    fn rules_can_be_given_as_inline_tables() {
        let mut t = Table::new();
        overlay(
            &mut t,
            vars(&[(
                "WHARF_AUTH__RULES",
                r#"[{repository = "**", users = ["*"], actions = ["pull"]}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(t["auth"]["rules"][0]["repository"].as_str(), Some("**"));
    }
}
