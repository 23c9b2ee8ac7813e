//! A full check of a flattened device tree before the `fdt` crate reads it.
//!
//! `fdt` 0.1 trusts the blob: a structure block that runs past its end, a
//! property name offset outside the strings block, a node name that is
//! not UTF-8 or a token where it expects another makes it panic (found by
//! `scripts/fuzz dtb`), and Vigil's boot would die with it. The tree is
//! QEMU's, but a user may hand QEMU an edited one (`-dtb`). So every blob
//! is walked once here, and only a tree in the shape `fdt` parses reaches
//! it (Devicetree Specification v0.4, §5 "Flattened Devicetree Format"):
//!
//! ```text
//! block := root NOP* END
//! root  := BEGIN_NODE name PROP* (NOP* node)* NOP* END_NODE
//! node  := BEGIN_NODE name PROP* node* NOP* END_NODE
//! ```
//!
//! (the NOPs libfdt leaves where something was deleted are accepted where
//! `fdt` skips them; elsewhere the tree is refused).

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// Deeper than any real tree; bounds the walk's recursion.
const MAX_DEPTH: usize = 32;

fn be32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `d[at..]` up to its NUL, if there is one and the name is UTF-8.
fn cstr(d: &[u8], at: usize) -> Option<&str> {
    let rest = d.get(at..)?;
    let n = rest.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&rest[..n]).ok()
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

struct Walk<'a> {
    block: &'a [u8],
    strings: &'a [u8],
    at: usize,
}

impl Walk<'_> {
    fn token(&mut self) -> Option<u32> {
        let t = be32(self.block, self.at)?;
        self.at += 4;
        Some(t)
    }

    fn peek(&self) -> Option<u32> {
        be32(self.block, self.at)
    }

    fn node(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH || self.token()? != BEGIN_NODE {
            return None;
        }
        let name = cstr(self.block, self.at)?;
        self.at = align4(self.at.checked_add(name.len() + 1)?)?;
        while self.peek()? == PROP {
            self.at += 4;
            let len = be32(self.block, self.at)? as usize;
            let nameoff = be32(self.block, self.at + 4)? as usize;
            self.at += 8;
            let end = self.at.checked_add(len)?;
            if end > self.block.len() {
                return None;
            }
            let pname = cstr(self.strings, nameoff)?;
            // `fdt` reads these as a 4-byte cell without checking.
            if matches!(pname, "#address-cells" | "#size-cells") && len < 4 {
                return None;
            }
            self.at = align4(end)?;
        }
        loop {
            // QEMU's arm_load_dtb NOPs out the /memory nodes of a tree
            // given with -dtb and adds its own: NOPs among the root's
            // children, which `fdt` skips there (a node it skips over as a
            // sibling must have none among its children).
            while depth == 0 && self.peek()? == NOP {
                self.at += 4;
            }
            if self.peek()? != BEGIN_NODE {
                break;
            }
            self.node(depth + 1)?;
        }
        while self.peek()? == NOP {
            self.at += 4;
        }
        (self.token()? == END_NODE).then_some(())
    }
}

/// Whether `dtb` is a tree `fdt` can read without panicking: a valid
/// header whose blocks lie inside it, and a well-formed structure block.
pub fn well_formed(dtb: &[u8]) -> bool {
    let check = || -> Option<()> {
        if be32(dtb, 0)? != MAGIC {
            return None;
        }
        let total = be32(dtb, 4)? as usize;
        let off_struct = be32(dtb, 8)? as usize;
        let off_strings = be32(dtb, 12)? as usize;
        let size_strings = be32(dtb, 32)? as usize;
        let size_struct = be32(dtb, 36)? as usize;
        if total > dtb.len() || total < 40 || !off_struct.is_multiple_of(4) {
            return None;
        }
        let inside = |off: usize, size: usize| off.checked_add(size).filter(|&e| e <= total);
        let block = dtb.get(off_struct..inside(off_struct, size_struct)?)?;
        let strings = dtb.get(off_strings..inside(off_strings, size_strings)?)?;
        let mut w = Walk {
            block,
            strings,
            at: 0,
        };
        w.node(0)?;
        while w.peek()? == NOP {
            w.at += 4;
        }
        (w.token()? == END).then_some(())
    };
    check().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A blob with structure tokens `body` (big-endian words) and the
    /// strings "reg\0#size-cells\0".
    fn blob(body: &[u32]) -> Vec<u8> {
        let strings = b"reg\0#size-cells\0";
        let off_struct = 40usize;
        let size_struct = body.len() * 4;
        let off_strings = off_struct + size_struct;
        let total = off_strings + strings.len();
        let mut d = Vec::new();
        for w in [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            40,
            17,
            16,
            0,
            strings.len() as u32,
            size_struct as u32,
        ] {
            d.extend_from_slice(&w.to_be_bytes());
        }
        for w in body {
            d.extend_from_slice(&w.to_be_bytes());
        }
        d.extend_from_slice(strings);
        d
    }

    /// BEGIN_NODE with an empty name (the root) or "a" (one word each).
    const ROOT: [u32; 2] = [BEGIN_NODE, 0];
    const A: [u32; 2] = [BEGIN_NODE, 0x6100_0000];
    const PROP_REG: [u32; 4] = [PROP, 4, 0, 0x1234];

    fn tree(parts: &[&[u32]]) -> Vec<u8> {
        blob(&parts.concat())
    }

    #[test]
    fn qemus_loaded_tree_shape_is_accepted() {
        // Root with a property, a NOPed-out child (QEMU's /memory), then a
        // child with a property, NOPs before END_NODE.
        let t = tree(&[
            &ROOT,
            &PROP_REG,
            &[NOP, NOP, NOP],
            &A,
            &PROP_REG,
            &[NOP, END_NODE],
            &[NOP, END_NODE, END],
        ]);
        assert!(well_formed(&t));
        let f = fdt::Fdt::new(&t).unwrap();
        // Every way Vigil walks it.
        let root = f.find_node("/").unwrap();
        assert_eq!(root.children().count(), 1);
        for n in root.children() {
            assert_eq!(n.properties().count(), 1);
            assert!(n.reg().is_some());
        }
        assert!(crate::find_path(&f, "/a").is_some());
    }

    #[test]
    fn what_fdt_would_panic_on_is_refused() {
        // NOPs among a non-root node's properties or children.
        assert!(!well_formed(&tree(&[
            &ROOT,
            &A,
            &[NOP],
            &PROP_REG,
            &[END_NODE, END_NODE, END]
        ])));
        assert!(!well_formed(&tree(&[
            &ROOT,
            &A,
            &[NOP],
            &A,
            &[END_NODE, END_NODE, END_NODE, END]
        ])));
        // A property name outside the strings block, a short #size-cells.
        assert!(!well_formed(&tree(&[
            &ROOT,
            &[PROP, 4, 999, 0],
            &[END_NODE, END]
        ])));
        assert!(!well_formed(&tree(&[
            &ROOT,
            &[PROP, 2, 4, 0],
            &[END_NODE, END]
        ])));
        // A property longer than the block; unbalanced; no END.
        assert!(!well_formed(&tree(&[
            &ROOT,
            &[PROP, 4096, 0],
            &[END_NODE, END]
        ])));
        assert!(!well_formed(&tree(&[&ROOT, &A, &[END_NODE, END]])));
        assert!(!well_formed(&tree(&[&ROOT, &[END_NODE]])));
        // A header whose blocks run past totalsize.
        let mut t = tree(&[&ROOT, &[END_NODE, END]]);
        t[36..40].copy_from_slice(&4096u32.to_be_bytes());
        assert!(!well_formed(&t));
    }

    #[test]
    fn a_minimal_tree_is_accepted() {
        assert!(well_formed(&tree(&[&ROOT, &[END_NODE, END]])));
    }
}
