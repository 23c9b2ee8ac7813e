//! `key=value` boot arguments from `/chosen/bootargs`.
//!
//! Vigil's own options are prefixed `vigil.` so they can share a command
//! line with others (e.g. `vigil.test=smp vigil.log=debug`).

/// A view of a boot command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootArgs<'a>(&'a str);

impl<'a> BootArgs<'a> {
    pub const fn new(line: &'a str) -> Self {
        Self(line)
    }

    /// The value of the last `key=value` word for `key` (later words
    /// override earlier ones, as on Linux), or `Some("")` for a bare `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        let mut found = None;
        for word in self.0.split_ascii_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if k == key => found = Some(v),
                None if word == key => found = Some(""),
                _ => {}
            }
        }
        found
    }

    /// Every word whose key starts with `prefix` but is not in `known`:
    /// lets the kernel report a mistyped option instead of ignoring it.
    pub fn unknown<'k>(
        &self,
        prefix: &'k str,
        known: &'k [&'k str],
    ) -> impl Iterator<Item = &'a str> + 'k
    where
        'a: 'k,
    {
        self.0.split_ascii_whitespace().filter(move |w| {
            let key = w.split_once('=').map_or(*w, |(k, _)| k);
            key.starts_with(prefix) && !known.contains(&key)
        })
    }
}
