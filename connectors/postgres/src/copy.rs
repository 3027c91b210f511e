//! `COPY ... TO STDOUT` text format: one row per line, tab-separated fields,
//! `\N` for NULL, backslash escapes for control characters.

/// Splits one COPY text line (without its newline) into unescaped fields.
pub fn split_line(line: &[u8]) -> Result<Vec<Option<String>>, CopyError> {
    let mut fields = Vec::new();
    for raw in line.split(|&b| b == b'\t') {
        if raw == b"\\N" {
            fields.push(None);
            continue;
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b != b'\\' {
                out.push(b);
                i += 1;
                continue;
            }
            let next = *raw.get(i + 1).ok_or(CopyError::Malformed)?;
            i += 2;
            match next {
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut v = (next - b'0') as u32;
                    for _ in 0..2 {
                        match raw.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + (d - b'0') as u32;
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                other => out.push(other),
            }
        }
        fields.push(Some(
            String::from_utf8(out).map_err(|_| CopyError::NotUtf8)?,
        ));
    }
    Ok(fields)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyError {
    #[error("COPY line ends inside an escape")]
    Malformed,
    #[error("COPY field is not UTF-8")]
    NotUtf8,
    #[error("COPY (FORMAT binary) stream does not start with its signature")]
    BadHeader,
    #[error("COPY stream ended inside a row or without its trailer")]
    Truncated,
    #[error("COPY (FORMAT binary) stream has data after its trailer")]
    AfterTrailer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_unescapes() {
        let fields = split_line(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101").unwrap();
        assert_eq!(
            fields,
            vec![
                Some("1".into()),
                None,
                Some("a\tb\nc\\d".into()),
                Some("A".into())
            ]
        );
        assert_eq!(split_line(b"x\\").unwrap_err(), CopyError::Malformed);
        assert_eq!(split_line(b"").unwrap(), vec![Some(String::new())]);
    }
}
