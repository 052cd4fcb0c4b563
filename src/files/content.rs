//! What an upload may be: the allow-list's types, the check that a file's
//! first bytes agree with the type it declared, and the name it may carry.

/// Bytes of a file's start that decide whether it is what it says.
pub const SNIFF_BYTES: usize = 8192;

/// `type/subtype` of a Content-Type value, lower case, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Text types are checked as text (UTF-8 without NUL); other types by
/// their signature.
fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || matches!(content_type, "application/json" | "application/xml")
}

/// Whether roomcast can check that content is of this type, which an
/// allow-list entry must be.
pub fn checkable(content_type: &str) -> bool {
    is_text(content_type) || infer::is_mime_supported(content_type)
}

/// Whether `head` (the file's first [`SNIFF_BYTES`], or all of it if it is
/// shorter) is content of `content_type`. `complete` says `head` is the
/// whole file (so a text file's last character is not cut).
pub fn agrees(content_type: &str, head: &[u8], complete: bool) -> bool {
    if is_text(content_type) {
        return looks_like_text(head, complete);
    }
    if content_type == "application/zip" && infer::archive::is_zip(head) {
        // Office documents and other zip-based formats are zip files too.
        return true;
    }
    infer::get(head).is_some_and(|kind| kind.mime_type() == content_type)
}

/// UTF-8 without NUL bytes; a character cut at the end of an incomplete
/// head is fine.
fn looks_like_text(head: &[u8], complete: bool) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // `error_len() == None`: the input ended inside a character.
        Err(err) => !complete && err.error_len().is_none(),
    }
}

/// The name a file is shown and downloaded under: no directories, no
/// control or bidirectional characters, no leading dots, at most 255 bytes;
/// `file` when nothing is left.
pub fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_invisible(*c))
        .map(|c| {
            if matches!(c, '"' | ':' | '*' | '?' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = clean.trim().trim_start_matches('.').trim().to_owned();
    clean = trimmed;
    while clean.len() > 255 {
        clean.pop();
    }
    if clean.is_empty() {
        "file".to_owned()
    } else {
        clean
    }
}

/// Characters that change how text around them is shown or hide in it:
/// bidirectional controls and zero-width characters.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// What RFC 5987 leaves unencoded in a `filename*` (its `attr-char`s).
const RFC5987: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` for a download under `name`: an ASCII fallback
/// and the exact name in RFC 5987 encoding.
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, RFC5987);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_decide_binary_types() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(agrees("image/png", png, true));
        assert!(!agrees("image/jpeg", png, true));
        assert!(!agrees("image/png", b"hello", true));
        assert!(agrees("application/pdf", b"%PDF-1.7\n", true));
        assert!(agrees("application/zip", b"PK\x03\x04rest", true));
        assert!(agrees("text/plain", "héllo".as_bytes(), true));
        assert!(!agrees("text/plain", png, true));
        assert!(!agrees("text/plain", b"a\0b", true));
        // A character cut by the end of the sniffed head is no reason.
        assert!(agrees("text/plain", &"é".as_bytes()[..1], false));
        assert!(!agrees("text/plain", &"é".as_bytes()[..1], true));
    }

    #[test]
    fn allow_list_entries_must_be_checkable() {
        assert!(checkable("image/png"));
        assert!(checkable("text/markdown"));
        assert!(!checkable("application/x-made-up"));
    }

    #[test]
    fn names_lose_paths_and_controls() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize_filename("a\r\nb\u{202E}c.txt"), "abc.txt");
        assert_eq!(sanitize_filename("..."), "file");
        assert_eq!(sanitize_filename("say \"hi\".txt"), "say _hi_.txt");
        assert_eq!(essence("Text/Plain; charset=utf-8"), "text/plain");
    }

    #[test]
    fn disposition_quotes_nothing_unsafe() {
        let header = content_disposition("naïve café.txt");
        assert_eq!(
            header,
            "attachment; filename=\"na_ve caf_.txt\"; filename*=UTF-8''na%C3%AFve%20caf%C3%A9.txt"
        );
    }
}
