//! Builds tiny ELF64 x86-64 kernels for tests: one PT_LOAD segment of code, optionally a
//! PT_NOTE segment with the PVH entry note. Shared with the integration tests by `#[path]`.

#![allow(dead_code)]

/// Builder of a minimal ELF64 executable.
pub struct ElfBuilder {
    load_addr: u64,
    entry: u64,
    bss: u64,
    pvh_entry: Option<u32>,
}

impl ElfBuilder {
    /// The segment contents: `hlt; jmp $-1` padded with NOPs.
    pub const CODE: [u8; 16] = [
        0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
        0x90,
    ];
    /// File offset of the code segment.
    pub const CODE_OFFSET: u64 = 0x200;

    /// A kernel whose one segment loads (and starts) at `load_addr`.
    pub fn new(load_addr: u64) -> Self {
        ElfBuilder {
            load_addr,
            entry: load_addr,
            bss: 0,
            pvh_entry: None,
        }
    }

    /// Sets `e_entry`.
    pub fn entry(mut self, entry: u64) -> Self {
        self.entry = entry;
        self
    }

    /// Adds `bytes` of bss (memory size beyond the file contents).
    pub fn bss(mut self, bytes: u64) -> Self {
        self.bss = bytes;
        self
    }

    /// Adds a PT_NOTE segment with a XEN_ELFNOTE_PHYS32_ENTRY note.
    pub fn pvh_entry(mut self, entry: u32) -> Self {
        self.pvh_entry = Some(entry);
        self
    }

    /// The ELF file.
    pub fn build(&self) -> Vec<u8> {
        let phnum: u16 = if self.pvh_entry.is_some() { 2 } else { 1 };
        let mut out = Vec::new();
        // ELF header.
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&self.entry.to_le_bytes());
        out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out.extend_from_slice(&phnum.to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        assert_eq!(out.len(), 64);

        let code_len = Self::CODE.len() as u64;
        let note_offset = Self::CODE_OFFSET + code_len;
        let note = self.pvh_entry.map(|entry| {
            let mut n = Vec::new();
            n.extend_from_slice(&4u32.to_le_bytes()); // namesz ("Xen\0")
            n.extend_from_slice(&4u32.to_le_bytes()); // descsz
            n.extend_from_slice(&0x12u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            n.extend_from_slice(b"Xen\0");
            n.extend_from_slice(&entry.to_le_bytes());
            n
        });

        push_phdr(
            &mut out,
            1, // PT_LOAD
            Self::CODE_OFFSET,
            self.load_addr,
            code_len,
            code_len.saturating_add(self.bss),
        );
        if let Some(n) = &note {
            push_phdr(
                &mut out,
                4, // PT_NOTE
                note_offset,
                self.load_addr + code_len,
                n.len() as u64,
                n.len() as u64,
            );
        }
        out.resize(Self::CODE_OFFSET as usize, 0);
        out.extend_from_slice(&Self::CODE);
        if let Some(n) = note {
            out.extend_from_slice(&n);
        }
        out
    }
}

fn push_phdr(out: &mut Vec<u8>, p_type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64) {
    out.extend_from_slice(&p_type.to_le_bytes());
    out.extend_from_slice(&7u32.to_le_bytes()); // RWX
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&paddr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&paddr.to_le_bytes());
    out.extend_from_slice(&filesz.to_le_bytes());
    out.extend_from_slice(&memsz.to_le_bytes());
    out.extend_from_slice(&8u64.to_le_bytes()); // p_align
}
