//! Quota headers in the formats that real LLM and REST APIs send.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header format the fake server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Dialect {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go-style reset durations.
    Openai,
    /// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*` with RFC 3339 resets.
    Anthropic,
    /// `x-ratelimit-{limit,remaining,used,reset,resource}` with an epoch-second reset.
    Github,
    /// The IETF draft structured fields `RateLimit-Policy` and `RateLimit`.
    Ietf,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Github => "github",
            Self::Ietf => "ietf",
        };
        f.write_str(name)
    }
}

/// One quota dimension of the server at the moment of a response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// The wall-clock time at which the window resets.
    pub(crate) reset_at: SystemTime,
    /// The window length, for the IETF `w` parameter.
    pub(crate) length: Duration,
}

/// The server's quota state for one response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuotaState {
    pub(crate) requests: Window,
    pub(crate) input_tokens: Window,
    pub(crate) output_tokens: Window,
    /// The current time, from which reset durations are computed.
    pub(crate) now: SystemTime,
}

impl QuotaState {
    /// Returns the token dimension that is closer to exhaustion, input or output.
    fn tokens(&self) -> Window {
        let input_used = used_fraction(&self.input_tokens);
        let output_used = used_fraction(&self.output_tokens);
        if output_used > input_used {
            self.output_tokens
        } else {
            self.input_tokens
        }
    }

    /// Returns the input plus output token window, as a provider with one token budget reports it.
    fn combined_tokens(&self) -> Window {
        Window {
            limit: self.input_tokens.limit + self.output_tokens.limit,
            remaining: self.input_tokens.remaining + self.output_tokens.remaining,
            ..self.input_tokens
        }
    }
}

fn used_fraction(window: &Window) -> f64 {
    if window.limit == 0 {
        return 1.0;
    }
    1.0 - window.remaining as f64 / window.limit as f64
}

/// Writes the quota headers of `dialect` for `state` into `headers`.
pub(crate) fn write_headers(dialect: Dialect, state: &QuotaState, headers: &mut HeaderMap) {
    match dialect {
        Dialect::Openai => write_openai(state, headers),
        Dialect::Anthropic => write_anthropic(state, headers),
        Dialect::Github => write_github(state, headers),
        Dialect::Ietf => write_ietf(state, headers),
    }
}

fn insert(headers: &mut HeaderMap, name: &str, value: String) {
    // The names and values built in this file are ASCII, so parsing them does not fail.
    if let (Ok(name), Ok(value)) = (
        HeaderName::try_from(name),
        HeaderValue::try_from(value.as_str()),
    ) {
        headers.append(name, value);
    }
}

/// Rounds a reset time up to a whole second, because a reset sent early invites retries that fail.
fn ceil_to_second(time: SystemTime) -> SystemTime {
    let Ok(since_epoch) = time.duration_since(SystemTime::UNIX_EPOCH) else {
        return time;
    };
    let whole = Duration::from_secs(since_epoch.as_secs());
    if whole == since_epoch {
        time
    } else {
        SystemTime::UNIX_EPOCH + whole + Duration::from_secs(1)
    }
}

fn reset_in(state: &QuotaState, window: &Window) -> Duration {
    window
        .reset_at
        .duration_since(state.now)
        .unwrap_or(Duration::ZERO)
}

fn write_openai(state: &QuotaState, headers: &mut HeaderMap) {
    let tokens = state.combined_tokens();
    for (dimension, window) in [("requests", state.requests), ("tokens", tokens)] {
        insert(
            headers,
            &format!("x-ratelimit-limit-{dimension}"),
            window.limit.to_string(),
        );
        insert(
            headers,
            &format!("x-ratelimit-remaining-{dimension}"),
            window.remaining.to_string(),
        );
        insert(
            headers,
            &format!("x-ratelimit-reset-{dimension}"),
            go_duration(reset_in(state, &window)),
        );
    }
}

fn write_anthropic(state: &QuotaState, headers: &mut HeaderMap) {
    let dimensions = [
        ("requests", state.requests),
        ("tokens", state.tokens()),
        ("input-tokens", state.input_tokens),
        ("output-tokens", state.output_tokens),
    ];
    for (dimension, window) in dimensions {
        let prefix = format!("anthropic-ratelimit-{dimension}");
        insert(
            headers,
            &format!("{prefix}-limit"),
            window.limit.to_string(),
        );
        insert(
            headers,
            &format!("{prefix}-remaining"),
            window.remaining.to_string(),
        );
        insert(
            headers,
            &format!("{prefix}-reset"),
            humantime::format_rfc3339_seconds(ceil_to_second(window.reset_at)).to_string(),
        );
    }
}

fn write_github(state: &QuotaState, headers: &mut HeaderMap) {
    let window = state.requests;
    let reset_epoch = ceil_to_second(window.reset_at)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_secs());
    insert(headers, "x-ratelimit-limit", window.limit.to_string());
    insert(
        headers,
        "x-ratelimit-remaining",
        window.remaining.to_string(),
    );
    insert(
        headers,
        "x-ratelimit-used",
        (window.limit - window.remaining).to_string(),
    );
    insert(headers, "x-ratelimit-reset", reset_epoch.to_string());
    insert(headers, "x-ratelimit-resource", "core".to_owned());
}

fn write_ietf(state: &QuotaState, headers: &mut HeaderMap) {
    let tokens = state.combined_tokens();
    let dimensions = [("requests", state.requests), ("tokens", tokens)];
    let policies: Vec<String> = dimensions
        .iter()
        .map(|(name, window)| {
            format!(
                "\"{name}\";q={};w={}",
                window.limit,
                window.length.as_secs().max(1)
            )
        })
        .collect();
    let current: Vec<String> = dimensions
        .iter()
        .map(|(name, window)| {
            let reset_secs = reset_in(state, window).as_secs_f64().ceil() as u64;
            format!("\"{name}\";r={};t={reset_secs}", window.remaining)
        })
        .collect();
    insert(headers, "ratelimit-policy", policies.join(", "));
    insert(headers, "ratelimit", current.join(", "));
}

/// Formats a duration the way Go's `time.Duration` prints it: `20ms`, `1.5s`, `6m0s`.
pub(crate) fn go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let minutes = millis / 60_000;
    let second_millis = millis % 60_000;
    let fraction = second_millis % 1000;
    let seconds = if fraction == 0 {
        (second_millis / 1000).to_string()
    } else {
        let fraction = format!("{fraction:03}");
        format!(
            "{}.{}",
            second_millis / 1000,
            fraction.trim_end_matches('0')
        )
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(now: SystemTime) -> QuotaState {
        let window = |limit, remaining| Window {
            limit,
            remaining,
            reset_at: now + Duration::from_millis(1500),
            length: Duration::from_secs(60),
        };
        QuotaState {
            requests: window(100, 25),
            input_tokens: window(4000, 3000),
            output_tokens: window(1000, 100),
            now,
        }
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("<missing>")
    }

    #[test]
    fn go_duration_matches_go_format() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(90_500)), "1m30.5s");
    }

    #[test]
    fn openai_headers_count_both_token_directions() {
        let mut headers = HeaderMap::new();
        write_headers(
            Dialect::Openai,
            &state_at(SystemTime::UNIX_EPOCH),
            &mut headers,
        );
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "100");
        assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "25");
        assert_eq!(header(&headers, "x-ratelimit-reset-requests"), "1.5s");
        assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "5000");
        assert_eq!(header(&headers, "x-ratelimit-remaining-tokens"), "3100");
    }

    #[test]
    fn anthropic_tokens_report_most_used_direction() {
        let mut headers = HeaderMap::new();
        write_headers(
            Dialect::Anthropic,
            &state_at(SystemTime::UNIX_EPOCH),
            &mut headers,
        );
        assert_eq!(header(&headers, "anthropic-ratelimit-tokens-limit"), "1000");
        assert_eq!(
            header(&headers, "anthropic-ratelimit-tokens-remaining"),
            "100"
        );
        assert_eq!(
            header(&headers, "anthropic-ratelimit-input-tokens-remaining"),
            "3000"
        );
        assert_eq!(
            header(&headers, "anthropic-ratelimit-requests-reset"),
            "1970-01-01T00:00:02Z"
        );
    }

    #[test]
    fn github_reset_rounds_up_to_epoch_second() {
        let mut headers = HeaderMap::new();
        write_headers(
            Dialect::Github,
            &state_at(SystemTime::UNIX_EPOCH),
            &mut headers,
        );
        assert_eq!(header(&headers, "x-ratelimit-used"), "75");
        assert_eq!(header(&headers, "x-ratelimit-reset"), "2");
        assert_eq!(header(&headers, "x-ratelimit-resource"), "core");
    }

    #[test]
    fn ietf_fields_list_both_policies() {
        let mut headers = HeaderMap::new();
        write_headers(
            Dialect::Ietf,
            &state_at(SystemTime::UNIX_EPOCH),
            &mut headers,
        );
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            "\"requests\";q=100;w=60, \"tokens\";q=5000;w=60"
        );
        assert_eq!(
            header(&headers, "ratelimit"),
            "\"requests\";r=25;t=2, \"tokens\";r=3100;t=2"
        );
    }
}
