//! E-mail addresses as workflows write them: `name@example.com`, `Name <name@example.com>`, and
//! lists of them separated by commas. The checker, the mailer and the approval pages read them
//! the same way.
//!
//! Part of the pure core: no I/O.

/// Splits a list of addresses on the commas between them: not those inside a quoted display
/// name (`"Doe, John" <john@example.com>`) or inside `<…>`.
pub fn split_addresses(s: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut angle) = (Vec::new(), 0, false, false);
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Why `s` is not an address: accepts `name@example.com` and `Name <name@example.com>`.
pub fn check_address(s: &str) -> Result<(), &'static str> {
    let s = s.trim();
    let addr = match (s.find('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        (None, false) => s,
        _ => return Err("unbalanced `<` `>`"),
    };
    let (local, domain) = addr.rsplit_once('@').ok_or("it has no `@`")?;
    if local.is_empty() || local.contains(char::is_whitespace) || local.contains(['<', '>', '@']) {
        return Err("the part before `@` is not valid");
    }
    if domain.is_empty()
        || !domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err("the domain is not valid");
    }
    if !domain.contains('.') && domain != "localhost" {
        return Err("the domain has no `.`");
    }
    Ok(())
}

/// The address of a recipient written `Name <address>`, or the recipient as it is.
pub fn bare_address(recipient: &str) -> String {
    match (recipient.rfind('<'), recipient.rfind('>')) {
        (Some(a), Some(b)) if a < b => recipient[a + 1..b].trim().to_string(),
        _ => recipient.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_split_on_commas_outside_quotes_and_brackets() {
        assert_eq!(
            split_addresses(r#""Doe, John" <john@example.com>, a@b.co ,"x\"y, z" <q@r.st>"#),
            [
                r#""Doe, John" <john@example.com>"#,
                "a@b.co",
                r#""x\"y, z" <q@r.st>"#
            ]
        );
        assert_eq!(
            split_addresses("Doe, John <john@example.com>"),
            ["Doe", "John <john@example.com>"]
        );
        assert_eq!(split_addresses(" , "), Vec::<&str>::new());
        assert!(check_address(r#""Doe, John" <john@example.com>"#).is_ok());
    }
}
