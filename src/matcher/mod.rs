//! What request values are compared with, shared by the config (which compiles them), the request
//! view and the decision: value matchers ([`StringMatch`]) and address ranges ([`cidr`]). Below
//! every pure module but [`crate::text`].

pub mod cidr;

/// How one named value (a header, a cookie, a query parameter) is matched.
/// Values compare exactly, byte for byte, as DESIGN.md requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    OneOf(Box<[Box<[u8]>]>),
    /// `present: true` holds for any value, an empty one included; `false` only when absent.
    Present(bool),
}

impl StringMatch {
    /// Whether the value (`None` when absent or unreadable) satisfies the matcher.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (StringMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (StringMatch::Exact(e), Some(v)) => v == &e[..],
            (StringMatch::Prefix(p), Some(v)) => v.starts_with(p),
            (StringMatch::Suffix(s), Some(v)) => v.ends_with(s),
            (StringMatch::OneOf(set), Some(v)) => set.iter().any(|e| v == &e[..]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[test]
    fn each_kind_matches_as_documented() {
        let one_of = StringMatch::OneOf(vec![b("legal"), b("finance")].into());
        let cases: &[(StringMatch, Option<&[u8]>, bool, &str)] = &[
            (StringMatch::Exact(b("legal")), Some(b"legal"), true, "exact equal"),
            (StringMatch::Exact(b("legal")), Some(b"Legal"), false, "exact is case-sensitive"),
            (StringMatch::Exact(b("legal")), None, false, "exact needs a value"),
            (StringMatch::Exact(b("")), Some(b""), true, "exact empty"),
            (StringMatch::Prefix(b("beta-")), Some(b"beta-7"), true, "prefix"),
            (StringMatch::Prefix(b("beta-")), Some(b"alpha-7"), false, "prefix miss"),
            (StringMatch::Suffix(b("@corp.example")), Some(b"a@corp.example"), true, "suffix"),
            (StringMatch::Suffix(b("@corp.example")), Some(b"a@corp.example.com"), false, "suffix miss"),
            (one_of.clone(), Some(b"finance"), true, "one_of member"),
            (one_of.clone(), Some(b"sales"), false, "one_of non-member"),
            (one_of, None, false, "one_of absent"),
            (StringMatch::Present(true), Some(b""), true, "present holds for an empty value"),
            (StringMatch::Present(true), None, false, "present true, absent"),
            (StringMatch::Present(false), None, true, "present false, absent"),
            (StringMatch::Present(false), Some(b"x"), false, "present false, present"),
        ];
        for (m, v, want, why) in cases {
            assert_eq!(m.matches(*v), *want, "{why}");
        }
    }
}
