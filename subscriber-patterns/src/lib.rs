//! Channel-name rules, Redis glob semantics and regex prefixes shared by the
//! `#[websocket_subscriber]` macro (compile-time validation) and the Switchboard runtime
//! (routing and Redis subscriptions), so both agree exactly.
//!
//! This is an implementation detail of `switchboard`; depend on `switchboard` instead.
#![deny(missing_docs)]

use std::fmt;

/// Why a channel name, glob pattern or regex was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    message: String,
}

impl PatternError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The human-readable reason, ending with how to fix it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PatternError {}

/// The channel name that stands for every channel the worker receives.
pub const ANY_CHANNEL: &str = "*";

/// Checks a channel name: non-empty, without whitespace or control characters.
///
/// `"*"` is a valid channel name (it means every channel).
///
/// # Errors
/// A [`PatternError`] saying what is wrong and how to fix it.
pub fn validate_channel(channel: &str) -> Result<(), PatternError> {
    // Fast path: printable ASCII without spaces, what nearly every channel name is.
    if !channel.is_empty() && channel.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if channel.is_empty() {
        return Err(PatternError::new(
            "channel name is empty: give the Redis channel name, e.g. \"queueJobCompleted\", or \"*\" for every channel",
        ));
    }
    if let Some(c) = channel
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(PatternError::new(format!(
            "channel name {channel:?} contains {}: channel names cannot contain whitespace or control characters; remove it",
            describe_char(c)
        )));
    }
    Ok(())
}

/// The same check as [`validate_channel`], usable in `const` context (ASCII whitespace and control
/// characters only, which is what a `const` can inspect). Returns a reason when invalid.
pub const fn const_channel_problem(channel: &str) -> Option<&'static str> {
    let bytes = channel.as_bytes();
    if bytes.is_empty() {
        return Some("channel name is empty");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b <= b' ' || b == 0x7f {
            return Some("channel name contains whitespace or a control character");
        }
        i += 1;
    }
    None
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '\t' => "a tab".to_owned(),
        '\n' => "a newline".to_owned(),
        '\r' => "a carriage return".to_owned(),
        c => format!("the character U+{:04X}", c as u32),
    }
}

/// Redis glob patterns, as used by `PSUBSCRIBE`.
pub mod glob {
    use super::PatternError;

    /// Checks that `pattern` is a well-formed Redis glob: not empty, every `[` closed, no trailing `\`,
    /// and no whitespace or control characters.
    ///
    /// # Errors
    /// A [`PatternError`] saying what is wrong and how to fix it.
    pub fn validate(pattern: &str) -> Result<(), PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::new(
                "glob pattern is empty: write e.g. pattern(\"analytics:*\")",
            ));
        }
        super::validate_channel(pattern).map_err(|e| {
            PatternError::new(e.message().replacen("channel name", "glob pattern", 1))
        })?;
        let b = pattern.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' => {
                    if i + 1 >= b.len() {
                        return Err(PatternError::new(format!(
                            "glob pattern {pattern:?} ends with a lone `\\`: escape it as `\\\\` or remove it"
                        )));
                    }
                    i += 2;
                }
                b'[' => {
                    let mut j = i + 1;
                    if j < b.len() && b[j] == b'^' {
                        j += 1;
                    }
                    let mut closed = false;
                    while j < b.len() {
                        if b[j] == b'\\' {
                            j += 2;
                            continue;
                        }
                        if b[j] == b']' {
                            closed = true;
                            break;
                        }
                        j += 1;
                    }
                    if !closed {
                        return Err(PatternError::new(format!(
                            "glob pattern {pattern:?} has a `[` that is never closed: add the `]` or escape it as `\\[`"
                        )));
                    }
                    i = j + 1;
                }
                _ => i += 1,
            }
        }
        Ok(())
    }

    /// True when `pattern` contains a glob special character (`*`, `?`, `[` or `\`).
    pub fn has_special(pattern: &str) -> bool {
        pattern
            .bytes()
            .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
    }

    /// Escapes glob special characters so the result matches `literal` exactly.
    pub fn escape(literal: &str) -> String {
        let mut out = String::with_capacity(literal.len());
        for c in literal.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// Matches `subject` against a Redis glob `pattern` exactly as Redis' `stringmatchlen` does.
    pub fn matches(pattern: &str, subject: &str) -> bool {
        match_bytes(pattern.as_bytes(), subject.as_bytes(), 0)
    }

    fn match_bytes(mut p: &[u8], mut s: &[u8], depth: usize) -> bool {
        // Redis bounds recursion too (against pathological patterns like "*a*a*a*...").
        if depth > 1000 {
            return false;
        }
        while !p.is_empty() && !s.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    while !s.is_empty() {
                        if match_bytes(&p[1..], s, depth + 1) {
                            return true;
                        }
                        s = &s[1..];
                    }
                    return false;
                }
                b'?' => {
                    s = &s[1..];
                }
                b'[' => {
                    p = &p[1..];
                    let not = !p.is_empty() && p[0] == b'^';
                    if not {
                        p = &p[1..];
                    }
                    let mut matched = false;
                    loop {
                        if p.is_empty() {
                            // Unclosed bracket: Redis treats the end as closing it.
                            break;
                        }
                        if p[0] == b'\\' && p.len() >= 2 {
                            p = &p[1..];
                            if p[0] == s[0] {
                                matched = true;
                            }
                        } else if p[0] == b']' {
                            break;
                        } else if p.len() >= 3 && p[1] == b'-' {
                            let (mut start, mut end) = (p[0], p[2]);
                            if start > end {
                                std::mem::swap(&mut start, &mut end);
                            }
                            if s[0] >= start && s[0] <= end {
                                matched = true;
                            }
                            p = &p[2..];
                        } else if p[0] == s[0] {
                            matched = true;
                        }
                        p = &p[1..];
                    }
                    if not {
                        matched = !matched;
                    }
                    if !matched {
                        return false;
                    }
                    s = &s[1..];
                    if p.is_empty() {
                        // The pattern ended inside the bracket.
                        return s.is_empty();
                    }
                }
                b'\\' if p.len() >= 2 => {
                    p = &p[1..];
                    if p[0] != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
                c => {
                    if c != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
            }
            p = &p[1..];
        }
        if s.is_empty() {
            while !p.is_empty() && p[0] == b'*' {
                p = &p[1..];
            }
        }
        p.is_empty() && s.is_empty()
    }

    /// The literal prefix of a pattern when the pattern is exactly `<literal>*`, e.g. `analytics:`
    /// for `analytics:*`. `Some("")` for `*`.
    pub fn simple_prefix(pattern: &str) -> Option<&str> {
        let prefix = pattern.strip_suffix('*')?;
        (!has_special(prefix)).then_some(prefix)
    }

    /// True when every channel that `narrow` matches is also matched by `broad`, as far as can be
    /// decided cheaply: `broad` is `*` or `<literal>*` and `narrow` starts with that literal.
    pub fn covers(broad: &str, narrow: &str) -> bool {
        match simple_prefix(broad) {
            Some(prefix) => narrow.starts_with(prefix) && broad != narrow,
            None => false,
        }
    }
}

/// Checks a regex: it must compile, and it must be able to match a non-empty channel name.
///
/// # Errors
/// A [`PatternError`] with the parser's explanation.
pub fn validate_regex(regex: &str) -> Result<(), PatternError> {
    let hir = regex_syntax::Parser::new()
        .parse(regex)
        .map_err(|e| PatternError::new(format!("invalid regex: {e}")))?;
    if hir.properties().maximum_len() == Some(0) {
        return Err(PatternError::new(format!(
            "regex {regex:?} can only match an empty channel name, so the handler could never run: fix the regex"
        )));
    }
    Ok(())
}

/// Checks a regex as [`validate_regex`] does and, when it is valid, says how it is subscribed as
/// [`regex_subscription`] does, with one parse instead of two. A regex that is `^` followed by
/// plain literal characters (`^analytics:`, the common case) is not parsed at all: its literal
/// prefix is the text after `^`.
///
/// # Errors
/// The error [`validate_regex`] returns.
pub fn analyze_regex(regex: &str) -> Result<RegexSubscription, PatternError> {
    if let Some(literal) = plain_anchored_literal(regex) {
        return Ok(RegexSubscription {
            pattern: format!("{}*", glob::escape(literal)),
            narrowed: true,
            prefix: literal.to_owned(),
        });
    }
    let hir = regex_syntax::Parser::new()
        .parse(regex)
        .map_err(|e| PatternError::new(format!("invalid regex: {e}")))?;
    if hir.properties().maximum_len() == Some(0) {
        return Err(PatternError::new(format!(
            "regex {regex:?} can only match an empty channel name, so the handler could never run: fix the regex"
        )));
    }
    Ok(subscription_of(&hir))
}

/// The literal after `^` when the regex is exactly `^` and one or more characters that are
/// literal everywhere in a regex (ASCII letters, digits and a few punctuation marks): what
/// `regex_syntax` parses into an anchored literal, whose prefix is that literal.
fn plain_anchored_literal(regex: &str) -> Option<&str> {
    let literal = regex.strip_prefix('^')?;
    let plain = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b':' | b'_' | b'-' | b'/' | b'@' | b'!' | b'%' | b',' | b';' | b'=' | b'<' | b'>'
            )
    };
    (!literal.is_empty() && literal.bytes().all(plain)).then_some(literal)
}

/// How a regex matcher is subscribed on Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexSubscription {
    /// The glob pattern to `PSUBSCRIBE` to (`*` when the regex has no literal prefix).
    pub pattern: String,
    /// False when the regex has no anchored literal prefix, so every channel must be received.
    pub narrowed: bool,
    /// The anchored literal prefix (`analytics:` for `^analytics:`), empty when there is none.
    pub prefix: String,
}

/// The Redis glob that receives every channel a regex can match: its anchored literal prefix
/// followed by `*` (`^analytics:` gives `analytics:*`), or `*` when it has none.
///
/// # Errors
/// A [`PatternError`] when the regex does not parse.
pub fn regex_subscription(regex: &str) -> Result<RegexSubscription, PatternError> {
    let hir = regex_syntax::Parser::new()
        .parse(regex)
        .map_err(|e| PatternError::new(format!("invalid regex: {e}")))?;
    Ok(subscription_of(&hir))
}

fn subscription_of(hir: &regex_syntax::hir::Hir) -> RegexSubscription {
    use regex_syntax::hir::{HirKind, Look};
    let parts: Vec<&regex_syntax::hir::Hir> = match hir.kind() {
        HirKind::Concat(parts) => parts.iter().collect(),
        _ => vec![hir],
    };
    let mut iter = parts.into_iter();
    let anchored = matches!(
        iter.next().map(|h| h.kind()),
        Some(HirKind::Look(Look::Start))
    );
    let mut prefix = Vec::new();
    if anchored {
        for part in iter {
            match part.kind() {
                HirKind::Literal(lit) => prefix.extend_from_slice(&lit.0),
                _ => break,
            }
        }
    }
    match String::from_utf8(prefix) {
        Ok(prefix) if !prefix.is_empty() => RegexSubscription {
            pattern: format!("{}*", glob::escape(&prefix)),
            narrowed: true,
            prefix,
        },
        _ => RegexSubscription {
            pattern: ANY_CHANNEL.to_owned(),
            narrowed: false,
            prefix: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules() {
        assert!(validate_channel("queueJobCompleted").is_ok());
        assert!(validate_channel("*").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("a b")
            .unwrap_err()
            .message()
            .contains("a space"));
        assert!(validate_channel("a\u{7}").is_err());
        assert!(validate_channel("a\u{a0}b").is_err());
        assert_eq!(const_channel_problem("ok:1"), None);
        assert!(const_channel_problem("").is_some());
        assert!(const_channel_problem("x\ty").is_some());
    }

    #[test]
    fn glob_matches_like_redis() {
        use glob::matches;
        assert!(matches("*", "anything"));
        assert!(matches("analytics:*", "analytics:pageview"));
        assert!(matches("analytics:*", "analytics:"));
        assert!(!matches("analytics:*", "analytic"));
        assert!(matches("h?llo", "hello"));
        assert!(!matches("h?llo", "hllo"));
        assert!(matches("h[ae]llo", "hallo"));
        assert!(!matches("h[ae]llo", "hillo"));
        assert!(matches("h[^e]llo", "hallo"));
        assert!(!matches("h[^e]llo", "hello"));
        assert!(matches("h[a-b]llo", "hbllo"));
        assert!(matches("h[b-a]llo", "hallo"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("a{b,c}", "a{b,c}"));
        assert!(!matches("a{b,c}", "ab"));
        assert!(matches("**", ""));
    }

    #[test]
    fn glob_validation() {
        assert!(glob::validate("analytics:*").is_ok());
        assert!(glob::validate("a[bc]").is_ok());
        assert!(glob::validate("a[bc").is_err());
        assert!(glob::validate("a\\").is_err());
        assert!(glob::validate("").is_err());
        assert!(glob::validate("a b*").is_err());
    }

    #[test]
    fn coverage() {
        assert!(glob::covers("*", "analytics:*"));
        assert!(glob::covers("analytics:*", "analytics:page*"));
        assert!(!glob::covers("analytics:*", "analytics:*"));
        assert!(!glob::covers("a?*", "ab*"));
        assert!(!glob::covers("analytics:*", "other:*"));
    }

    #[test]
    fn regex_prefixes() {
        let s = regex_subscription("^analytics:").unwrap();
        assert_eq!(s.pattern, "analytics:*");
        assert!(s.narrowed);
        assert_eq!(regex_subscription("^a\\*b.*").unwrap().pattern, "a\\*b*");
        let s = regex_subscription("analytics").unwrap();
        assert_eq!(s.pattern, "*");
        assert!(!s.narrowed);
        assert_eq!(regex_subscription("^(a|b)x").unwrap().pattern, "*");
        assert!(regex_subscription("(").is_err());
        assert!(validate_regex("^$").is_err());
        assert!(validate_regex("^queue").is_ok());
    }

    #[test]
    fn analyze_agrees_with_validate_and_subscription() {
        for regex in [
            "^analytics:",
            "^r12:",
            "^a-b/c@d!e%f,g;h=i<j>k",
            "^a\\*b.*",
            "analytics",
            "^(a|b)x",
            "^queue",
            "^",
            "^$",
            "(",
            "^a b",
            "^é:",
            "^[ab]",
            "^a#b",
        ] {
            let analyzed = analyze_regex(regex);
            match validate_regex(regex) {
                Err(e) => assert_eq!(analyzed, Err(e), "{regex:?}"),
                Ok(()) => assert_eq!(analyzed, regex_subscription(regex), "{regex:?}"),
            }
        }
        assert!(plain_anchored_literal("^r12:").is_some());
        assert!(plain_anchored_literal("^r.2").is_none());
    }

    #[test]
    fn channel_fast_path_agrees() {
        for channel in [
            "",
            "a",
            "ch:1",
            "a b",
            "a\tb",
            "é",
            "a\u{7f}",
            "~!@#$%^&*()_+",
        ] {
            let slow = channel
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control())
                && !channel.is_empty();
            assert_eq!(validate_channel(channel).is_ok(), slow, "{channel:?}");
        }
    }
}
