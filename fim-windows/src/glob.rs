//! Case-insensitive glob matching for Windows paths and key paths:
//! `*` and `?` stay inside one path component, `**` crosses components.
//! Both `\` and `/` are accepted as separators and compared as `\`.

pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = normalise(pattern).chars().collect();
    let t: Vec<char> = normalise(text).chars().collect();
    match_from(&p, &t)
}

fn normalise(s: &str) -> String {
    s.replace('/', "\\").to_lowercase()
}

fn match_from(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            // `**\` may also match zero components.
            let rest_after_sep = rest.strip_prefix(&['\\']).unwrap_or(rest);
            (0..=t.len()).any(|i| match_from(rest, &t[i..]))
                || (rest.len() != rest_after_sep.len() && match_from(rest_after_sep, t))
        }
        Some('*') => {
            let rest = &p[1..];
            let limit = t.iter().position(|c| *c == '\\').unwrap_or(t.len());
            (0..=limit).any(|i| match_from(rest, &t[i..]))
        }
        Some('?') => t.first().is_some_and(|c| *c != '\\') && match_from(&p[1..], &t[1..]),
        Some(c) => t.first() == Some(c) && match_from(&p[1..], &t[1..]),
    }
}

pub fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_in_one_component() {
        assert!(glob_match(r"C:\Windows\*.dll", r"c:\windows\A.DLL"));
        assert!(!glob_match(r"C:\Windows\*.dll", r"C:\Windows\sub\a.dll"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(glob_match(r"C:\a\**\*.exe", r"C:\a\b\c\x.exe"));
        assert!(glob_match(r"C:\a\**\*.exe", r"C:\a\x.exe"));
        assert!(!glob_match(r"C:\a\**\*.exe", r"C:\b\x.exe"));
    }

    #[test]
    fn question_mark_matches_one_char() {
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", r"a\c"));
        assert!(!glob_match("a?c", "ac"));
    }
}
