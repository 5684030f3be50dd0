//! The cache key: a template over the request's scheme, routed host, path and query, in nginx's
//! vocabulary (`$scheme`, `$host`, `$uri`, `$args`, `$request_uri`). Pure.
//!
//! The routed host is always part of the key (validation refuses a template without `$host`):
//! a key shared across hosts would let one site's response be served for another.

/// Variables a template may use.
const VARS: [&str; 5] = ["$request_uri", "$scheme", "$host", "$uri", "$args"];

/// Checks a template: only known variables, and `$host` present.
pub fn validate_template(t: &str) -> Result<(), String> {
    if !t.contains("$host") {
        return Err("must contain $host (the key always includes the routed host)".into());
    }
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        let tail = &rest[i..];
        match VARS.iter().find(|v| tail.starts_with(**v)) {
            Some(v) => rest = &tail[v.len()..],
            None => {
                return Err(format!(
                    "unknown variable in {t:?}: use $scheme, $host, $uri, $args, $request_uri"
                ))
            }
        }
    }
    Ok(())
}

/// Renders a validated template. `host` is the normalised routed host (lower case, no port).
pub fn render(t: &str, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
    let request_uri = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    // `$request_uri` first: `$uri` is a prefix of nothing else, but keep the order explicit.
    t.replace("$request_uri", &request_uri)
        .replace("$scheme", scheme)
        .replace("$host", host)
        .replace("$uri", path)
        .replace("$args", query.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_has_scheme_host_path_query() {
        let t = "$scheme://$host$request_uri";
        assert!(validate_template(t).is_ok());
        assert_eq!(
            render(t, "http", "a.test", "/x", Some("q=1")),
            "http://a.test/x?q=1"
        );
        assert_eq!(render(t, "https", "a.test", "/x", None), "https://a.test/x");
    }

    #[test]
    fn host_is_mandatory_and_unknown_vars_refused() {
        assert!(validate_template("$scheme$request_uri").is_err());
        assert!(validate_template("$host$cookie_x").is_err());
        assert!(validate_template("$host$uri").is_ok());
    }

    #[test]
    fn args_can_be_left_out() {
        assert_eq!(render("$host$uri", "http", "h", "/p", Some("utm=1")), "h/p");
    }
}
