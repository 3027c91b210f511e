//! Server charsets → text decoders.
//!
//! A binlog carries character columns as the bytes of the column's charset;
//! the table map names the collation id, and the caller maps it to the server's
//! charset name (`information_schema.COLLATIONS`). This module turns that name
//! into a [`Charset`] once per column, so the row decoder only dispatches on an
//! enum per value.
//!
//! Decoding is strict: bytes that are not valid in the charset are an error,
//! never replaced, because a replacement character in the lake would be silent
//! data loss.
//!
//! MySQL's `latin1` is Windows-1252 with the five bytes Windows leaves undefined
//! (0x81, 0x8D, 0x8F, 0x90, 0x9D) mapped to the C1 controls U+0081…; the WHATWG
//! `windows-1252` decoder of `encoding_rs` maps exactly so (tested below).
//! `ascii` is checked by hand because WHATWG treats the label `ascii` as
//! windows-1252. `latin5` is refused: MySQL's is ISO-8859-9 but the WHATWG label
//! decodes as windows-1254, which differs in 0x80–0x9F.

use encoding_rs::Encoding;

/// How to turn a column's bytes into text (or keep them as bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3, utf8: validated UTF-8.
    Utf8,
    /// 7-bit ASCII.
    Ascii,
    /// `binary`: not text at all.
    Binary,
    /// UTF-32 big-endian (MySQL `utf32`), decoded by hand.
    Utf32,
    /// Any other charset `encoding_rs` implements.
    Encoding(&'static Encoding),
}

/// The most bytes one character of the server charset `name` takes
/// (`information_schema.CHARACTER_SETS.MAXLEN`). A table map gives CHAR and
/// VARCHAR lengths in bytes; the declared length in characters is that over
/// this.
pub fn max_bytes_per_char(name: &str) -> u16 {
    match name.trim().to_ascii_lowercase().as_str() {
        "utf8mb4" | "utf16" | "utf16le" | "utf32" | "gb18030" => 4,
        "utf8mb3" | "utf8" | "ujis" | "eucjpms" => 3,
        "ucs2" | "big5" | "cp932" | "sjis" | "euckr" | "gb2312" | "gbk" => 2,
        _ => 1,
    }
}

impl Charset {
    /// The decoder for a server charset name, or `None` when we cannot decode it.
    pub fn from_server_name(name: &str) -> Option<Charset> {
        let name = name.trim().to_ascii_lowercase();
        let encoding = match name.as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" => return Some(Charset::Utf8),
            "ascii" => return Some(Charset::Ascii),
            "binary" => return Some(Charset::Binary),
            "utf32" => return Some(Charset::Utf32),
            "latin5" => return None,
            "latin1" => encoding_rs::WINDOWS_1252,
            "latin2" => encoding_rs::ISO_8859_2,
            "greek" => encoding_rs::ISO_8859_7,
            "hebrew" => encoding_rs::ISO_8859_8,
            "cp1250" => encoding_rs::WINDOWS_1250,
            "cp1251" => encoding_rs::WINDOWS_1251,
            "cp1256" => encoding_rs::WINDOWS_1256,
            "cp1257" => encoding_rs::WINDOWS_1257,
            "cp866" => encoding_rs::IBM866,
            "koi8r" => encoding_rs::KOI8_R,
            "koi8u" => encoding_rs::KOI8_U,
            "macroman" => encoding_rs::MACINTOSH,
            "gbk" | "gb2312" => encoding_rs::GBK,
            "gb18030" => encoding_rs::GB18030,
            "big5" => encoding_rs::BIG5,
            "sjis" | "cp932" => encoding_rs::SHIFT_JIS,
            "ujis" | "eucjpms" => encoding_rs::EUC_JP,
            "euckr" => encoding_rs::EUC_KR,
            "tis620" => encoding_rs::WINDOWS_874,
            "utf16" | "ucs2" => encoding_rs::UTF_16BE,
            "utf16le" => encoding_rs::UTF_16LE,
            other => {
                let encoding = Encoding::for_label_no_replacement(other.as_bytes())?;
                // A label the WHATWG standard maps to UTF-8 or windows-1252 is
                // not what a MySQL charset of that name means.
                if encoding == encoding_rs::UTF_8 || encoding == encoding_rs::WINDOWS_1252 {
                    return None;
                }
                encoding
            }
        };
        Some(Charset::Encoding(encoding))
    }

    /// Decodes `bytes`; `None` when they are not valid in this charset (or the
    /// charset is `binary`, which has no text form).
    #[inline]
    pub fn decode(&self, bytes: &[u8]) -> Option<String> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
            Charset::Ascii => bytes
                .is_ascii()
                .then(|| std::str::from_utf8(bytes).ok().map(str::to_owned))
                .flatten(),
            Charset::Binary => None,
            Charset::Utf32 => {
                if !bytes.len().is_multiple_of(4) {
                    return None;
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect()
            }
            Charset::Encoding(encoding) => {
                if bytes.is_ascii() && encoding.is_ascii_compatible() {
                    return std::str::from_utf8(bytes).ok().map(str::to_owned);
                }
                encoding
                    .decode_without_bom_handling_and_without_replacement(bytes)
                    .map(|cow| cow.into_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(name: &str, bytes: &[u8]) -> Option<String> {
        Charset::from_server_name(name).unwrap().decode(bytes)
    }

    #[test]
    fn latin1_is_mysql_latin1() {
        assert_eq!(decode("latin1", b"\xe9\x80").as_deref(), Some("é€"));
        // The five bytes cp1252 leaves undefined are C1 controls in MySQL.
        assert_eq!(
            decode("latin1", b"\x81\x8d\x8f\x90\x9d").as_deref(),
            Some("\u{81}\u{8d}\u{8f}\u{90}\u{9d}")
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode("latin1", &all).unwrap().chars().count(), 256);
    }

    #[test]
    fn strict_decoding() {
        assert_eq!(
            decode("utf8mb4", "héllo 😀".as_bytes()).as_deref(),
            Some("héllo 😀")
        );
        assert_eq!(decode("utf8mb4", b"\xff"), None);
        assert_eq!(decode("ascii", b"abc").as_deref(), Some("abc"));
        assert_eq!(decode("ascii", b"\xe9"), None);
        assert_eq!(decode("cp1251", b"\xcf\xf0\xe8").as_deref(), Some("При"));
        assert_eq!(decode("gbk", b"\xc4\xe3\xba\xc3").as_deref(), Some("你好"));
        assert_eq!(decode("sjis", b"\x82\xa0").as_deref(), Some("あ"));
        assert_eq!(decode("euckr", b"\xb0\xa1").as_deref(), Some("가"));
        assert_eq!(decode("koi8r", b"\xf0").as_deref(), Some("П"));
        assert_eq!(decode("utf16", b"\x00A\x00\xe9").as_deref(), Some("Aé"));
        assert_eq!(decode("utf32", b"\x00\x01\xf6\x00").as_deref(), Some("😀"));
        assert_eq!(decode("utf32", b"\x00\x11\x00\x00"), None);
        assert_eq!(
            Charset::from_server_name("binary").unwrap().decode(b"x"),
            None
        );
    }

    #[test]
    fn unknown_charsets() {
        assert_eq!(Charset::from_server_name("latin5"), None);
        assert_eq!(Charset::from_server_name("armscii8"), None);
        assert_eq!(Charset::from_server_name("no-such"), None);
    }
}
