//! The functions Helm gives templates besides Go's builtins: the part of Sprig
//! that charts use, Helm's own (`include`, `tpl`, `required`, `fail`, `toYaml`,
//! `lookup`, ...), and the methods of Helm's objects.
//!
//! Semantics follow Sprig's documentation, with two departures that only affect
//! values no image is read from: maps are values, not references (so `set` on a
//! map held in a variable is made to assign the variable back, see
//! [`super::assign_back`]), and the random functions (`randAlphaNum`,
//! `uuidv4`, ...) return fixed strings of the asked length so a render is
//! reproducible.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use base64::Engine as _;
use gotmpl::{FuncMap, Template, TemplateError, Value};

use super::values::{from_json, map, string, to_json};

/// The function a method call is rewritten into: `helmMethod "Get" .Files "x"`.
pub const METHOD: &str = "helmMethod__";
/// The methods of Helm's objects that charts call.
pub const METHODS: &[&str] = &[
    "Has",
    "Get",
    "Glob",
    "AsConfig",
    "AsSecrets",
    "Lines",
    "GetBytes",
];

/// Go's builtin functions, which `gotmpl` adds to every template.
pub const GO_BUILTINS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html", "js",
    "urlquery", "call", "eq", "ne", "lt", "le", "gt", "ge",
];

/// How deep `include` and `tpl` may nest. Helm allows 1000; real charts nest a
/// handful, and each level costs stack in the executor, so a chart that includes
/// itself stops here with an error instead of overflowing the stack.
const MAX_INCLUDE_DEPTH: usize = 32;

/// What the functions that execute templates need.
pub struct Helpers {
    /// The chart's template set, filled once it is parsed.
    pub set: Weak<OnceLock<Template>>,
}

type R = Result<Value, TemplateError>;

fn err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Exec(msg.into())
}

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), TemplateError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(TemplateError::ArgCount {
            name: name.into(),
            expected: n,
            got: args.len(),
        })
    }
}

/// A value as text, as Sprig's `strval` gives it (nil is empty).
fn text(v: &Value) -> String {
    match v {
        Value::Nil => String::new(),
        other => other.to_string(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Uint(u) => i64::try_from(*u).unwrap_or(i64::MAX),
        #[allow(clippy::cast_possible_truncation)]
        Value::Float(f) => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => s.trim().parse::<i64>().unwrap_or_else(|_| {
            #[allow(clippy::cast_possible_truncation)]
            s.trim().parse::<f64>().map_or(0, |f| f as i64)
        }),
        _ => 0,
    }
}

fn float(v: &Value) -> f64 {
    match v {
        #[allow(clippy::cast_precision_loss)]
        Value::Int(i) => *i as f64,
        #[allow(clippy::cast_precision_loss)]
        Value::Uint(u) => *u as f64,
        Value::Float(f) => *f,
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        Value::Bool(b) => f64::from(u8::from(*b)),
        _ => 0.0,
    }
}

/// Sprig's `empty`: nil, false, zero, "" and empty collections.
pub fn empty(v: &Value) -> bool {
    !v.is_truthy()
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::List(l) => l.to_vec(),
        Value::Nil => Vec::new(),
        other => vec![other.clone()],
    }
}

fn dict(v: &Value) -> BTreeMap<Arc<str>, Value> {
    match v {
        Value::Map(m) => (**m).clone(),
        _ => BTreeMap::new(),
    }
}

/// `cat`, `quote` and `squote`: each argument that is not nil, as `show` writes
/// it, joined by spaces.
fn join_given(a: &[Value], show: impl Fn(&Value) -> String) -> String {
    a.iter()
        .filter(|v| !matches!(v, Value::Nil))
        .map(show)
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(n: &Value, s: &str) -> Result<String, TemplateError> {
    let n = count("indent", n, 1024)?;
    let lines = s.bytes().filter(|&b| b == b'\n').count() + 1;
    if s.len() + n * lines > MAX_TEXT * 16 {
        return Err(err("indent: the text would be too long"));
    }
    let pad = " ".repeat(n);
    Ok(format!("{pad}{}", s.replace('\n', &format!("\n{pad}"))))
}

/// Go's `%q` of a string.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `toYaml`: YAML without the trailing newline, as Helm writes it.
pub fn to_yaml(v: &Value) -> Result<String, TemplateError> {
    let json = to_json(v);
    if json.is_null() {
        return Ok("null".into());
    }
    serde_yaml_ng::to_string(&json)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|e| err(format!("toYaml: {e}")))
}

fn regex(pattern: &Value) -> Result<regex::Regex, TemplateError> {
    regex::Regex::new(&text(pattern)).map_err(|e| err(format!("regular expression: {e}")))
}

/// Go's regexp replacement syntax (`$1`, `${name}`) is the `regex` crate's.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "invalid",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int64",
        Value::Uint(_) => "uint64",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
        Value::Function(_) => "func",
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "<nil>",
        Value::List(_) => "[]interface {}",
        Value::Map(_) => "map[string]interface {}",
        other => kind_of(other),
    }
}

/// Deep-merges `src` into `dst`; with `overwrite` the values of `src` win,
/// otherwise those already in `dst` do (Sprig's `mergeOverwrite` and `merge`).
fn merge_into(
    dst: &mut BTreeMap<Arc<str>, Value>,
    src: &BTreeMap<Arc<str>, Value>,
    overwrite: bool,
) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Map(d)), Value::Map(s)) => {
                let mut inner = (**d).clone();
                merge_into(&mut inner, s, overwrite);
                *d = Arc::new(inner);
            }
            (Some(existing), _) if !overwrite && !matches!(existing, Value::Nil) => {}
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A fixed string of `n` characters from `alphabet`: charts use the random
/// functions for passwords, which never carry an image.
fn fixed(n: &Value, alphabet: &str) -> R {
    let n = count("random string", n, MAX_TEXT)?;
    Ok(string(alphabet.chars().cycle().take(n).collect::<String>()))
}

/// Helm's `semverCompare`, with the Masterminds constraint syntax charts use:
/// `a, b` (or `a b`) for "and", `a || b` for "or"; operators `=`, `!=`, `>`,
/// `>=`, `<`, `<=`, `~` (patch-level changes; `~1` any 1.x), `^` (no change of
/// the leftmost non-zero part); a version with parts left out or written `x`
/// (`1.2`, `1.2.x`, `*`) is the range of what it leaves open. As in Masterminds,
/// a prerelease satisfies an alternative only if one of its terms names a
/// prerelease (`>=1.19-0` admits `1.31.0-rc.1`, `>=1.19` does not).
pub fn semver_compare(constraint: &str, version: &str) -> Result<bool, TemplateError> {
    let v = parse_version(version)
        .ok_or_else(|| err(format!("invalid semantic version {version:?}")))?;
    let bad = || {
        err(format!(
            "invalid semantic version constraint {constraint:?}"
        ))
    };
    for alt in constraint.split("||") {
        let words: Vec<&str> = alt
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .collect();
        // `>= 1.2` is one term written with a space.
        let mut terms = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let mut term = words[i].to_string();
            if term.chars().all(|c| "<>=!~^".contains(c)) && i + 1 < words.len() {
                i += 1;
                term.push_str(words[i]);
            }
            i += 1;
            terms.push(term);
        }
        if terms.is_empty() {
            return Err(bad());
        }
        let mut names_pre = false;
        let mut all = true;
        for term in &terms {
            let op_len = term
                .find(|c: char| !"<>=!~^".contains(c))
                .unwrap_or(term.len());
            let (op, ver) = term.split_at(op_len);
            let p = Partial::parse(ver).ok_or_else(bad)?;
            names_pre |= !p.low.pre.is_empty();
            let (low, high) = (&p.low, p.high());
            let in_range = |v: &semver::Version| v >= low && high.as_ref().is_none_or(|h| v < h);
            let ok = match op {
                "" | "=" | "==" => in_range(&v),
                "!=" => !in_range(&v),
                ">" => high.as_ref().is_some_and(|h| v >= *h),
                ">=" | "=>" => v >= *low,
                "<" => v < *low,
                "<=" | "=<" => high.as_ref().is_none_or(|h| v < *h),
                "~" | "~>" => {
                    let high = match p.given {
                        0 => None,
                        1 => Some(bound(low.major + 1, 0, 0)),
                        _ => Some(bound(low.major, low.minor + 1, 0)),
                    };
                    v >= *low && high.is_none_or(|h| v < h)
                }
                "^" => {
                    let high = match (low.major, low.minor, p.given) {
                        (_, _, 0) => None,
                        (0, _, 1) => Some(bound(1, 0, 0)),
                        (0, 0, 2) => Some(bound(0, 1, 0)),
                        (0, 0, _) => Some(bound(0, 0, low.patch + 1)),
                        (0, m, _) => Some(bound(0, m + 1, 0)),
                        (m, _, _) => Some(bound(m + 1, 0, 0)),
                    };
                    v >= *low && high.is_none_or(|h| v < h)
                }
                _ => return Err(bad()),
            };
            all &= ok;
        }
        if all && (v.pre.is_empty() || names_pre) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A version of a constraint: its lowest version, and how many of major, minor
/// and patch it gives (`1.2` and `1.2.x` give 2, `*` gives 0).
struct Partial {
    low: semver::Version,
    given: u8,
}

impl Partial {
    fn parse(s: &str) -> Option<Partial> {
        let s = s.trim().trim_start_matches(['v', '=']);
        // Build metadata first: it may itself hold a `-`.
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let mut nums = [0u64; 3];
        let mut given = 0;
        let mut wild = false;
        for (i, part) in core.split('.').enumerate() {
            match (i, part) {
                (3.., _) => return None,
                (_, "x" | "X" | "*") => wild = true,
                // Nothing is given after a wildcard (`1.x.3` is not a version).
                (_, _) if wild => return None,
                (i, p) => {
                    nums[i] = p.parse().ok()?;
                    given += 1;
                }
            }
        }
        let mut low = semver::Version::new(nums[0], nums[1], nums[2]);
        if let Some(p) = pre {
            low.pre = semver::Prerelease::new(p).ok()?;
        }
        Some(Partial { low, given })
    }

    /// The first version past the range it names (`1.2` → 1.3.0, `1.2.3` →
    /// the next version after it); none for `*`.
    fn high(&self) -> Option<semver::Version> {
        let l = &self.low;
        match self.given {
            0 => None,
            1 => Some(bound(l.major + 1, 0, 0)),
            2 => Some(bound(l.major, l.minor + 1, 0)),
            _ => Some(successor(l)),
        }
    }
}

/// The first version of `major.minor.patch`, its prereleases included: the end of
/// a range below it, so that `<=1.2` leaves out `1.3.0-rc.1` as Masterminds does.
fn bound(major: u64, minor: u64, patch: u64) -> semver::Version {
    semver::Version {
        pre: semver::Prerelease::new("0").expect("a valid prerelease"),
        ..semver::Version::new(major, minor, patch)
    }
}

/// The smallest version greater than `v` for a range check `v <= x < successor`.
fn successor(v: &semver::Version) -> semver::Version {
    let mut next = v.clone();
    next.build = semver::BuildMetadata::EMPTY;
    next.pre = if v.pre.is_empty() {
        // 1.2.3 is followed by 1.2.4-0, the first prerelease of the next patch.
        next.patch += 1;
        semver::Prerelease::new("0").expect("a valid prerelease")
    } else {
        semver::Prerelease::new(&format!("{}.0", v.pre)).expect("a valid prerelease")
    };
    next
}

/// A version as Sprig reads one: an optional `v`, parts left out taken as 0.
fn parse_version(s: &str) -> Option<semver::Version> {
    Partial::parse(s).filter(|p| p.given > 0).map(|p| p.low)
}

/// Every function, `include` and `tpl` bound to `helpers`.
pub fn all(helpers: &Helpers) -> FuncMap {
    let mut m = FuncMap::new();
    let mut f = |name: &str, func: fn(&[Value]) -> R| {
        m.insert(name.into(), Arc::new(func));
    };
    // Strings.
    f("upper", |a| Ok(string(text(one(a)?).to_uppercase())));
    f("lower", |a| Ok(string(text(one(a)?).to_lowercase())));
    f("title", |a| {
        let s = text(one(a)?);
        let mut out = String::with_capacity(s.len());
        let mut start = true;
        for c in s.chars() {
            if start {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            start = c.is_whitespace() || c == '-' || c == '_';
        }
        Ok(string(out))
    });
    f("trim", |a| Ok(string(text(one(a)?).trim())));
    f("trimAll", |a| {
        arity("trimAll", a, 2)?;
        let cut = text(&a[0]);
        Ok(string(text(&a[1]).trim_matches(|c| cut.contains(c))))
    });
    f("trimPrefix", |a| {
        arity("trimPrefix", a, 2)?;
        let (p, s) = (text(&a[0]), text(&a[1]));
        Ok(string(s.strip_prefix(p.as_str()).unwrap_or(&s)))
    });
    f("trimSuffix", |a| {
        arity("trimSuffix", a, 2)?;
        let (p, s) = (text(&a[0]), text(&a[1]));
        Ok(string(s.strip_suffix(p.as_str()).unwrap_or(&s)))
    });
    f("trunc", |a| {
        arity("trunc", a, 2)?;
        let (n, s) = (int(&a[0]), text(&a[1]).chars().collect::<Vec<_>>());
        let n = usize::try_from(n.unsigned_abs())
            .unwrap_or(usize::MAX)
            .min(s.len());
        let kept = if int(&a[0]) >= 0 {
            &s[..n]
        } else {
            &s[s.len() - n..]
        };
        Ok(string(kept.iter().collect::<String>()))
    });
    f("replace", |a| {
        arity("replace", a, 3)?;
        Ok(string(text(&a[2]).replace(&text(&a[0]), &text(&a[1]))))
    });
    f("contains", |a| {
        arity("contains", a, 2)?;
        Ok(Value::Bool(text(&a[1]).contains(&text(&a[0]))))
    });
    f("hasPrefix", |a| {
        arity("hasPrefix", a, 2)?;
        Ok(Value::Bool(text(&a[1]).starts_with(&text(&a[0]))))
    });
    f("hasSuffix", |a| {
        arity("hasSuffix", a, 2)?;
        Ok(Value::Bool(text(&a[1]).ends_with(&text(&a[0]))))
    });
    f("indent", |a| {
        arity("indent", a, 2)?;
        Ok(string(indent(&a[0], &text(&a[1]))?))
    });
    f("nindent", |a| {
        arity("nindent", a, 2)?;
        Ok(string(format!("\n{}", indent(&a[0], &text(&a[1]))?)))
    });
    f("repeat", |a| {
        arity("repeat", a, 2)?;
        let s = text(&a[1]);
        let n = count("repeat", &a[0], MAX_TEXT / s.len().max(1))?;
        Ok(string(s.repeat(n)))
    });
    f("substr", |a| {
        arity("substr", a, 3)?;
        let s: Vec<char> = text(&a[2]).chars().collect();
        let start = usize::try_from(int(&a[0])).unwrap_or(0).min(s.len());
        let end = usize::try_from(int(&a[1])).map_or(s.len(), |e| e.min(s.len()));
        Ok(string(s[start..end.max(start)].iter().collect::<String>()))
    });
    f("nospace", |a| {
        Ok(string(text(one(a)?).split_whitespace().collect::<String>()))
    });
    f("cat", |a| Ok(string(join_given(a, text))));
    f("quote", |a| {
        Ok(string(join_given(a, |v| go_quote(&text(v)))))
    });
    f("squote", |a| {
        Ok(string(join_given(a, |v| format!("'{}'", text(v)))))
    });
    f("join", |a| {
        arity("join", a, 2)?;
        let sep = text(&a[0]);
        Ok(string(
            list(&a[1]).iter().map(text).collect::<Vec<_>>().join(&sep),
        ))
    });
    f("splitList", |a| {
        arity("splitList", a, 2)?;
        let (sep, s) = (text(&a[0]), text(&a[1]));
        Ok(Value::List(s.split(sep.as_str()).map(string).collect()))
    });
    f("split", |a| {
        arity("split", a, 2)?;
        let (sep, s) = (text(&a[0]), text(&a[1]));
        Ok(map(s.split(sep.as_str()).enumerate().map(|(i, p)| {
            (Arc::from(format!("_{i}").as_str()), string(p))
        })))
    });
    f("toString", |a| Ok(string(one(a)?.to_string())));
    f("toStrings", |a| {
        Ok(Value::List(
            list(one(a)?).iter().map(|v| string(text(v))).collect(),
        ))
    });
    f("b64enc", |a| {
        Ok(string(
            base64::engine::general_purpose::STANDARD.encode(text(one(a)?)),
        ))
    });
    f("b64dec", |a| {
        let s = text(one(a)?);
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(|b| string(String::from_utf8_lossy(&b)))
            .map_err(|e| err(format!("b64dec: {e}")))
    });
    f("sha256sum", |a| {
        Ok(string(
            airlock_oci::digest::Digest::of(text(one(a)?).as_bytes()).hex(),
        ))
    });
    f("regexMatch", |a| {
        arity("regexMatch", a, 2)?;
        Ok(Value::Bool(regex(&a[0])?.is_match(&text(&a[1]))))
    });
    f("regexFind", |a| {
        arity("regexFind", a, 2)?;
        let s = text(&a[1]);
        Ok(string(regex(&a[0])?.find(&s).map_or("", |m| m.as_str())))
    });
    f("regexFindAll", |a| {
        arity("regexFindAll", a, 3)?;
        let s = text(&a[1]);
        let n = usize::try_from(int(&a[2])).unwrap_or(usize::MAX);
        Ok(Value::List(
            regex(&a[0])?
                .find_iter(&s)
                .take(n)
                .map(|m| string(m.as_str()))
                .collect(),
        ))
    });
    f("regexReplaceAll", |a| {
        arity("regexReplaceAll", a, 3)?;
        Ok(string(
            regex(&a[0])?.replace_all(&text(&a[1]), text(&a[2]).as_str()),
        ))
    });
    f("regexReplaceAllLiteral", |a| {
        arity("regexReplaceAllLiteral", a, 3)?;
        let repl = text(&a[2]);
        Ok(string(
            regex(&a[0])?.replace_all(&text(&a[1]), regex::NoExpand(&repl)),
        ))
    });
    f("regexSplit", |a| {
        arity("regexSplit", a, 3)?;
        let s = text(&a[1]);
        let n = usize::try_from(int(&a[2])).unwrap_or(usize::MAX);
        Ok(Value::List(
            regex(&a[0])?.splitn(&s, n).map(string).collect(),
        ))
    });
    // Defaults and flow.
    f("default", |a| match a {
        [d] => Ok(d.clone()),
        [d, given] => Ok(if empty(given) {
            d.clone()
        } else {
            given.clone()
        }),
        _ => arity("default", a, 2).map(|()| Value::Nil),
    });
    f("empty", |a| Ok(Value::Bool(empty(one(a)?))));
    f("coalesce", |a| {
        Ok(a.iter().find(|v| !empty(v)).cloned().unwrap_or(Value::Nil))
    });
    f("ternary", |a| {
        arity("ternary", a, 3)?;
        Ok(if a[2].is_truthy() {
            a[0].clone()
        } else {
            a[1].clone()
        })
    });
    f("required", |a| {
        arity("required", a, 2)?;
        match &a[1] {
            Value::Nil => Err(err(text(&a[0]))),
            Value::String(s) if s.is_empty() => Err(err(text(&a[0]))),
            v => Ok(v.clone()),
        }
    });
    f("fail", |a| Err(err(text(one(a)?))));
    // Lists.
    f("list", |a| Ok(Value::List(a.iter().cloned().collect())));
    f("first", |a| {
        Ok(list(one(a)?).first().cloned().unwrap_or(Value::Nil))
    });
    f("last", |a| {
        Ok(list(one(a)?).last().cloned().unwrap_or(Value::Nil))
    });
    f("rest", |a| {
        Ok(Value::List(list(one(a)?).iter().skip(1).cloned().collect()))
    });
    f("initial", |a| {
        let l = list(one(a)?);
        Ok(Value::List(
            l[..l.len().saturating_sub(1)].iter().cloned().collect(),
        ))
    });
    for name in ["append", "push"] {
        f(name, |a| {
            arity("append", a, 2)?;
            let mut l = list(&a[0]);
            l.push(a[1].clone());
            Ok(Value::List(l.into()))
        });
    }
    f("prepend", |a| {
        arity("prepend", a, 2)?;
        let mut l = list(&a[0]);
        l.insert(0, a[1].clone());
        Ok(Value::List(l.into()))
    });
    f("concat", |a| {
        Ok(Value::List(a.iter().flat_map(list).collect()))
    });
    f("has", |a| {
        arity("has", a, 2)?;
        Ok(Value::Bool(list(&a[1]).contains(&a[0])))
    });
    f("without", |a| {
        let (l, out) = a.split_first().ok_or_else(|| err("without needs a list"))?;
        Ok(Value::List(
            list(l).into_iter().filter(|v| !out.contains(v)).collect(),
        ))
    });
    f("uniq", |a| {
        let mut seen = Vec::new();
        for v in list(one(a)?) {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        Ok(Value::List(seen.into()))
    });
    f("compact", |a| {
        Ok(Value::List(
            list(one(a)?).into_iter().filter(|v| !empty(v)).collect(),
        ))
    });
    f("sortAlpha", |a| {
        let mut l: Vec<String> = list(one(a)?).iter().map(text).collect();
        l.sort();
        Ok(Value::List(l.into_iter().map(string).collect()))
    });
    f("reverse", |a| {
        Ok(Value::List(list(one(a)?).into_iter().rev().collect()))
    });
    f("until", |a| {
        let n = count("until", one(a)?, MAX_LIST)?;
        Ok(Value::List((0..n).map(|i| Value::Int(i as i64)).collect()))
    });
    // Dictionaries.
    f("dict", |a| {
        Ok(map(a.chunks(2).map(|kv| {
            (
                Arc::from(text(&kv[0]).as_str()),
                kv.get(1).cloned().unwrap_or(Value::Nil),
            )
        })))
    });
    f("get", |a| {
        arity("get", a, 2)?;
        Ok(dict(&a[0])
            .get(text(&a[1]).as_str())
            .cloned()
            .unwrap_or_else(|| string("")))
    });
    f("set", |a| {
        arity("set", a, 3)?;
        let mut d = dict(&a[0]);
        d.insert(Arc::from(text(&a[1]).as_str()), a[2].clone());
        Ok(Value::Map(Arc::new(d)))
    });
    f("unset", |a| {
        arity("unset", a, 2)?;
        let mut d = dict(&a[0]);
        d.remove(text(&a[1]).as_str());
        Ok(Value::Map(Arc::new(d)))
    });
    f("hasKey", |a| {
        arity("hasKey", a, 2)?;
        Ok(Value::Bool(dict(&a[0]).contains_key(text(&a[1]).as_str())))
    });
    f("keys", |a| {
        Ok(Value::List(
            a.iter()
                .flat_map(|d| dict(d).into_keys().map(Value::String))
                .collect(),
        ))
    });
    f("values", |a| {
        Ok(Value::List(dict(one(a)?).into_values().collect()))
    });
    f("pick", |a| pick(a, true));
    f("omit", |a| pick(a, false));
    f("merge", |a| merge(a, false));
    f("mergeOverwrite", |a| merge(a, true));
    f("deepCopy", |a| Ok(one(a)?.clone()));
    f("dig", |a| {
        if a.len() < 3 {
            return Err(err("dig needs keys, a default and a dict"));
        }
        let (d, rest) = a.split_last().expect("checked");
        let (default, keys) = rest.split_last().expect("checked");
        let mut cur = d.clone();
        for k in keys {
            match dict(&cur).get(text(k).as_str()) {
                Some(v) => cur = v.clone(),
                None => return Ok(default.clone()),
            }
        }
        Ok(cur)
    });
    // Types and encodings.
    f("kindOf", |a| Ok(string(kind_of(one(a)?))));
    f("kindIs", |a| {
        arity("kindIs", a, 2)?;
        let k = kind_of(&a[1]);
        // Go reports integers as `int` and charts test for it.
        let want = text(&a[0]);
        Ok(Value::Bool(k == want || (want == "int" && k == "int64")))
    });
    f("typeOf", |a| Ok(string(type_of(one(a)?))));
    f("typeIs", |a| {
        arity("typeIs", a, 2)?;
        Ok(Value::Bool(type_of(&a[1]) == text(&a[0])))
    });
    for name in ["int", "int64", "atoi"] {
        f(name, |a| Ok(Value::Int(int(one(a)?))));
    }
    f("float64", |a| Ok(Value::Float(float(one(a)?))));
    f("toJson", |a| Ok(string(to_json(one(a)?).to_string())));
    f("toRawJson", |a| Ok(string(to_json(one(a)?).to_string())));
    f("toPrettyJson", |a| {
        serde_json::to_string_pretty(&to_json(one(a)?))
            .map(string)
            .map_err(|e| err(e.to_string()))
    });
    f("toYaml", |a| to_yaml(one(a)?).map(string));
    f("fromYaml", |a| {
        Ok(
            match serde_yaml_ng::from_str::<serde_json::Value>(&text(one(a)?)) {
                Ok(v @ serde_json::Value::Object(_)) => from_json(&v),
                Ok(serde_json::Value::Null) => map([]),
                Ok(_) => map([(Arc::from("Error"), string("not a YAML mapping"))]),
                Err(e) => map([(Arc::from("Error"), string(e.to_string()))]),
            },
        )
    });
    f("fromJson", |a| {
        Ok(
            match serde_json::from_str::<serde_json::Value>(&text(one(a)?)) {
                Ok(v) => from_json(&v),
                Err(e) => map([(Arc::from("Error"), string(e.to_string()))]),
            },
        )
    });
    // Arithmetic, on integers as Sprig does.
    f("add", |a| {
        Ok(Value::Int(a.iter().map(int).fold(0, i64::wrapping_add)))
    });
    f("add1", |a| Ok(Value::Int(int(one(a)?).wrapping_add(1))));
    f("sub", |a| {
        arity("sub", a, 2)?;
        Ok(Value::Int(int(&a[0]).wrapping_sub(int(&a[1]))))
    });
    f("mul", |a| {
        Ok(Value::Int(a.iter().map(int).fold(1, i64::wrapping_mul)))
    });
    f("div", |a| {
        arity("div", a, 2)?;
        int(&a[0])
            .checked_div(int(&a[1]))
            .map(Value::Int)
            .ok_or_else(|| err("div: division by zero"))
    });
    f("mod", |a| {
        arity("mod", a, 2)?;
        int(&a[0])
            .checked_rem(int(&a[1]))
            .map(Value::Int)
            .ok_or_else(|| err("mod: division by zero"))
    });
    f("max", |a| {
        Ok(Value::Int(a.iter().map(int).max().unwrap_or(0)))
    });
    f("min", |a| {
        Ok(Value::Int(a.iter().map(int).min().unwrap_or(0)))
    });
    f("floor", |a| Ok(Value::Float(float(one(a)?).floor())));
    f("ceil", |a| Ok(Value::Float(float(one(a)?).ceil())));
    f("semverCompare", |a| {
        arity("semverCompare", a, 2)?;
        semver_compare(&text(&a[0]), &text(&a[1])).map(Value::Bool)
    });
    // Helm: `lookup` reads the live cluster, which a render for mirroring has
    // not got; Helm's own `helm template` returns an empty map too.
    f("lookup", |_| Ok(map([])));
    // Random values, made fixed (see the module documentation).
    f("randAlphaNum", |a| fixed(one(a)?, "a1"));
    f("randAlpha", |a| fixed(one(a)?, "a"));
    f("randNumeric", |a| fixed(one(a)?, "1"));
    f("randAscii", |a| fixed(one(a)?, "a"));
    f("uuidv4", |_| {
        Ok(string("00000000-0000-4000-8000-000000000000"))
    });
    f(METHOD, method);
    m.insert(
        "include".into(),
        executing(helpers, "include", |t, a| {
            t.execute_template_to_string(&text(&a[0]), &a[1])
        }),
    );
    m.insert(
        "tpl".into(),
        executing(helpers, "tpl", |t, a| {
            // A function the set has not got fails when called, naming it.
            let (tree, defines) =
                super::parse("tpl", &text(&a[0]), None).map_err(|e| err(format!("tpl: {e}")))?;
            let mut t = t.clone();
            for d in defines {
                t = t.add_parse_tree(d.name.as_str(), d.body);
            }
            t.add_parse_tree("tpl", tree)
                .execute_template_to_string("tpl", &a[1])
        }),
    );
    m
}

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `include` and `tpl`: functions of two arguments that execute templates of the
/// finished set (`run` gets the set and the arguments).
fn executing(
    helpers: &Helpers,
    name: &'static str,
    run: fn(&Template, &[Value]) -> Result<String, TemplateError>,
) -> gotmpl::ValueFunc {
    let set = helpers.set.clone();
    Arc::new(move |a: &[Value]| {
        arity(name, a, 2)?;
        let set = super::upgrade(&set)?;
        let t = set
            .get()
            .ok_or_else(|| err(format!("{name} before the chart is parsed")))?;
        nested(|| run(t, a)).map(|s| string(super::no_value(s)))
    })
}

/// Runs an `include` or `tpl`, refusing to nest deeper than
/// [`MAX_INCLUDE_DEPTH`] (a template that includes itself would otherwise
/// recurse until the stack ends).
fn nested(run: impl FnOnce() -> Result<String, TemplateError>) -> Result<String, TemplateError> {
    /// Leaves the level however `run` ends, unwinding included.
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let _level = Level;
    if depth > MAX_INCLUDE_DEPTH {
        return Err(err(format!(
            "include nested more than {MAX_INCLUDE_DEPTH} deep"
        )));
    }
    run()
}

/// The longest text a function makes (`repeat`, `indent`, the random ones),
/// and the longest list (`until`): a chart needs far less, and a hostile one
/// must not exhaust memory.
const MAX_TEXT: usize = 1 << 20;
const MAX_LIST: usize = 100_000;

/// `n` as a count of at most `max`, or an error naming `function`.
fn count(function: &str, n: &Value, max: usize) -> Result<usize, TemplateError> {
    let n = int(n);
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| err(format!("{function}: {n} is not a count from 0 to {max}")))
}

fn one(a: &[Value]) -> Result<&Value, TemplateError> {
    match a {
        [v] => Ok(v),
        _ => Err(err(format!("expected 1 argument, got {}", a.len()))),
    }
}

/// Sprig's `pick` (`keep`: the named keys) and `omit` (the others).
fn pick(a: &[Value], keep: bool) -> R {
    let (d, names) = a
        .split_first()
        .ok_or_else(|| err("pick and omit need a dict"))?;
    let names: Vec<String> = names.iter().map(text).collect();
    Ok(Value::Map(Arc::new(
        dict(d)
            .into_iter()
            .filter(|(k, _)| names.iter().any(|n| **n == **k) == keep)
            .collect(),
    )))
}

fn merge(a: &[Value], overwrite: bool) -> R {
    let (dst, srcs) = a.split_first().ok_or_else(|| err("merge needs a dict"))?;
    let mut out = dict(dst);
    for s in srcs {
        merge_into(&mut out, &dict(s), overwrite);
    }
    Ok(Value::Map(Arc::new(out)))
}

/// The methods of Helm's objects: `.Capabilities.APIVersions.Has` (a list) and
/// those of `.Files` (a map of path to content). On any other map the "method"
/// is the field of that name, so a values key named `Get` still reads.
fn method(a: &[Value]) -> R {
    let (name, receiver, args) = match a {
        [n, r, rest @ ..] => (text(n), r, rest),
        _ => return Err(err("method call without a receiver")),
    };
    let files = || dict(receiver);
    match (name.as_str(), receiver, args) {
        ("Has", Value::List(l), [v]) => Ok(Value::Bool(l.iter().any(|x| text(x) == text(v)))),
        ("Get" | "GetBytes", Value::Map(_), [path]) => Ok(files()
            .get(text(path).as_str())
            .cloned()
            .unwrap_or_else(|| string(""))),
        ("Glob", Value::Map(_), [pattern]) => {
            let re = glob(&text(pattern))?;
            Ok(Value::Map(Arc::new(
                files()
                    .into_iter()
                    .filter(|(k, _)| re.is_match(k))
                    .collect(),
            )))
        }
        ("Lines", Value::Map(_), [path]) => Ok(Value::List(
            text(files().get(text(path).as_str()).unwrap_or(&Value::Nil))
                .lines()
                .map(string)
                .collect(),
        )),
        ("AsConfig" | "AsSecrets", Value::Map(_), []) => {
            let secret = name == "AsSecrets";
            let entries = files().into_iter().map(|(k, v)| {
                let base = k.rsplit('/').next().unwrap_or(&k).to_string();
                let content = text(&v);
                let content = if secret {
                    base64::engine::general_purpose::STANDARD.encode(content)
                } else {
                    content
                };
                (Arc::from(base.as_str()), string(content))
            });
            to_yaml(&map(entries)).map(string)
        }
        (_, Value::Map(m), []) => Ok(m.get(name.as_str()).cloned().unwrap_or(Value::Nil)),
        (_, other, _) => Err(err(format!(
            "can't call method {name} on {}",
            type_of(other)
        ))),
    }
}

/// A glob of `.Files.Glob` (`*` within a path segment, `**` across, `?`).
fn glob(pattern: &str) -> Result<regex::Regex, TemplateError> {
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                re.push_str(".*");
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| err(format!("glob {pattern:?}: {e}")))
}
