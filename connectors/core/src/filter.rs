//! Which source tables a pipeline captures: include and exclude patterns over
//! `schema.table` (Postgres) or `database.table` (MySQL), the same for every
//! source.

use crate::event::TableId;

/// Include/exclude patterns over `schema.table`, `*` and `?` as wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl TableFilter {
    pub fn matches(&self, table: &TableId) -> bool {
        let name = table.to_string();
        self.include.iter().any(|p| glob(p, &name)) && !self.exclude.iter().any(|p| glob(p, &name))
    }
}

/// Glob match with `*` (any run) and `?` (one char).
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob("public.*", "public.orders"));
        assert!(!glob("public.*", "shop.orders"));
        assert!(glob("*.ord?rs", "x.orders"));
        assert!(glob("*", "a.b"));
        assert!(!glob("public.order", "public.orders"));
        let filter = TableFilter {
            include: vec!["public.*".into()],
            exclude: vec!["public.audit_*".into()],
        };
        assert!(filter.matches(&TableId::new("public", "orders")));
        assert!(!filter.matches(&TableId::new("public", "audit_log")));
    }
}
