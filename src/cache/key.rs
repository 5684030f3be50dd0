//! The cache key: a template over the request's scheme, routed host, path and query, in nginx's
//! vocabulary (`$scheme`, `$host`, `$uri`, `$args`, `$request_uri`). Pure.
//!
//! The routed host is always part of the key (validation refuses a template without `$host`):
//! a key shared across hosts would let one site's response be served for another.

/// Variables a template may use (longest first where one is a prefix of another).
const VARS: [(&str, Var); 5] = [
    ("$request_uri", Var::RequestUri),
    ("$scheme", Var::Scheme),
    ("$host", Var::Host),
    ("$uri", Var::Uri),
    ("$args", Var::Args),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RequestUri,
    Scheme,
    Host,
    Uri,
    Args,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed key template, rendered in one pass per request (variables in the request's own
/// text, such as a path containing `$host`, are never substituted again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template: only known variables, and `$host` present.
    pub fn parse(t: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        let mut has_host = false;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                parts.push(Part::Lit(rest[..i].to_string()));
            }
            let tail = &rest[i..];
            let Some((name, var)) = VARS.iter().find(|(name, _)| tail.starts_with(name)) else {
                return Err(format!(
                    "unknown variable in {t:?}: use $scheme, $host, $uri, $args, $request_uri"
                ));
            };
            has_host |= *var == Var::Host;
            parts.push(Part::Var(*var));
            rest = &tail[name.len()..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        if !has_host {
            return Err("must contain $host (the key always includes the routed host)".into());
        }
        Ok(Template { parts })
    }

    /// Renders the key. `host` is the normalised routed host (lower case, no port).
    pub fn render(&self, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(
            scheme.len() + host.len() + 2 * (path.len() + query.map_or(0, |q| q.len() + 1)) + 8,
        );
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(Var::Scheme) => out.push_str(scheme),
                Part::Var(Var::Host) => out.push_str(host),
                Part::Var(Var::Uri) => out.push_str(path),
                Part::Var(Var::Args) => out.push_str(query.unwrap_or("")),
                Part::Var(Var::RequestUri) => {
                    out.push_str(path);
                    if let Some(q) = query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
        out
    }
}

/// Checks a template: only known variables, and `$host` present.
pub fn validate_template(t: &str) -> Result<(), String> {
    Template::parse(t).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_has_scheme_host_path_query() {
        let t = "$scheme://$host$request_uri";
        assert!(validate_template(t).is_ok());
        let k = Template::parse(t).unwrap();
        assert_eq!(
            k.render("http", "a.test", "/x", Some("q=1")),
            "http://a.test/x?q=1"
        );
        assert_eq!(k.render("https", "a.test", "/x", None), "https://a.test/x");
    }

    #[test]
    fn host_is_mandatory_and_unknown_vars_refused() {
        assert!(validate_template("$scheme$request_uri").is_err());
        assert!(validate_template("$host$cookie_x").is_err());
        assert!(validate_template("$host$uri").is_ok());
    }

    #[test]
    fn args_can_be_left_out() {
        let k = Template::parse("$host$uri").unwrap();
        assert_eq!(k.render("http", "h", "/p", Some("utm=1")), "h/p");
    }

    #[test]
    fn variables_in_the_request_are_not_substituted() {
        let k = Template::parse("$scheme://$host$request_uri").unwrap();
        assert_eq!(
            k.render("http", "a.test", "/x$host$scheme", Some("$args")),
            "http://a.test/x$host$scheme?$args"
        );
        let k = Template::parse("[$host]$uri|$args|$scheme").unwrap();
        assert_eq!(k.render("https", "h", "/p", Some("a=1")), "[h]/p|a=1|https");
        assert_eq!(k.render("https", "h", "/p", None), "[h]/p||https");
    }
}
