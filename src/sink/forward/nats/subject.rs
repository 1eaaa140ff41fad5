//! Subject templates of the `nats` sink (`--nats-entries-subject`,
//! `--nats-batches-subject`): checked once at start-up, rendered per
//! record into a valid publish subject whatever the record holds.

/// The placeholders a subject template may use.
const PLACEHOLDERS: [&str; 4] = ["kind", "vm_id", "model_uuid", "unit"];

/// A subject template: literal text and `{placeholder}`s.
#[derive(Clone, Debug)]
pub(super) struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Field(&'static str),
}

impl Template {
    pub(super) fn parse(text: &str, flag: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{flag} {text:?}: unclosed '{{'"))?;
            let name = &rest[open + 1..open + close];
            let field = PLACEHOLDERS
                .iter()
                .find(|p| **p == name)
                .ok_or_else(|| {
                    format!(
                        "{flag} {text:?}: unknown placeholder {{{name}}} (expected {{kind}}, {{vm_id}}, {{model_uuid}} or {{unit}})"
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if rest.contains('}') {
            return Err(format!("{flag} {text:?}: unmatched '}}'"));
        }
        let template = Template {
            text: text.to_owned(),
            parts,
        };
        // Every placeholder renders to at least one safe character, so the
        // subject is valid for any record when this sample is.
        let sample = template.render(&|_| "x");
        let valid = !sample.is_empty()
            && sample
                .split('.')
                .all(|t| !t.is_empty() && !t.chars().any(char::is_whitespace))
            && !sample.split('.').any(|t| t.contains(['*', '>']));
        if !valid {
            return Err(format!(
                "{flag} {text:?}: not a valid publish subject (dot-separated non-empty tokens, no wildcards or whitespace)"
            ));
        }
        Ok(template)
    }

    pub(super) fn render<'a>(&self, value: &dyn Fn(&str) -> &'a str) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(name) => push_token(&mut out, value(name)),
            }
        }
        out
    }

    /// The stream subject covering every subject of this template: its
    /// literal tokens before the first placeholder, then `>`.
    pub(super) fn wildcard(&self, flag: &str) -> Result<String, String> {
        let fixed = match self.text.find('{') {
            None => return Ok(self.text.clone()),
            Some(i) => &self.text[..i],
        };
        // Drop the token the placeholder starts in.
        let prefix = match fixed.rfind('.') {
            Some(dot) => &fixed[..=dot],
            None => "",
        };
        if prefix.is_empty() {
            return Err(format!(
                "{flag} {:?}: --nats-create-stream needs a fixed first token (such as metering.) to derive the stream's subjects",
                self.text
            ));
        }
        Ok(format!("{prefix}>"))
    }
}

/// Appends `value` as a subject-safe token: `.`, `*`, `>` and whitespace
/// become `_`; an empty value becomes `_`.
fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| {
        if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
            '_'
        } else {
            c
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_safe_tokens() {
        let t = Template::parse("metering.entries.{kind}", "f").unwrap();
        let s = t.render(&|n| if n == "kind" { "vm.compute.start" } else { "" });
        assert_eq!(s, "metering.entries.vm_compute_start");
        let t = Template::parse("m.{vm_id}.{unit}", "f").unwrap();
        assert_eq!(
            t.render(&|n| if n == "vm_id" { "a b*>" } else { "" }),
            "m.a_b__._"
        );
        assert_eq!(t.wildcard("f").unwrap(), "m.>");
        assert!(Template::parse("m.{nope}", "f").is_err());
        assert!(Template::parse("m..{kind}", "f").is_err());
        assert!(Template::parse("m.*.{kind}", "f").is_err());
        assert!(Template::parse("{kind}", "f")
            .unwrap()
            .wildcard("f")
            .is_err());
        assert_eq!(
            Template::parse("m.x-{kind}", "f")
                .unwrap()
                .wildcard("f")
                .unwrap(),
            "m.>"
        );
        assert_eq!(
            Template::parse("m.all", "f")
                .unwrap()
                .wildcard("f")
                .unwrap(),
            "m.all"
        );
    }
}
